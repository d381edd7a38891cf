"""Minimal in-process fake of the Hugging Face Hub HTTP API (stdlib only).

Enough for huggingface_hub 2.x: create_repo, preupload + NDJSON commit (regular files only),
repo_info / dataset_info, list_repo_tree / list_repo_files, HEAD/GET resolve (hf_hub_download,
snapshot_download), validate-yaml (repo cards). State is in memory; commits are immutable snapshots.

    with FakeHub() as hub:          # hub.url -> "http://127.0.0.1:<port>"
        HfApi(endpoint=hub.url, token="fake").create_repo("me/ds", repo_type="dataset")
"""

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
API_RE = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)"
    r"(?:/(preupload|commit|tree|revision|paths-info)/([^/]+)(/.*)?)?$"
)
RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class DropConnection(Exception):
    """Close the connection without a reply."""


class HubError(Exception):
    def __init__(self, status: int, code: str | None, msg: str, **extra):
        super().__init__(msg)
        self.status, self.code, self.msg, self.extra = status, code, msg, extra


class Repo:
    def __init__(self, repo_id: str, repo_type: str):
        self.repo_id, self.repo_type = repo_id, repo_type
        self.commits: dict[str, dict[str, bytes]] = {}  # commit oid -> {path: content}
        self.branches: dict[str, str] = {}
        self.lock = threading.Lock()
        self.commit(
            "initial commit", {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}, None
        )

    def resolve(self, rev: str) -> str:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.commits:
            return rev
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def commit(self, summary: str, files: dict[str, bytes], parent: str | None, branch: str = "main") -> str:
        oid = hashlib.sha1(f"{summary}{time.time_ns()}{sorted(files)}".encode()).hexdigest()
        self.commits[oid] = files
        self.branches[branch] = oid
        return oid


class FakeHub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) log, handy for assertions
        self.before_commit: Callable[[Repo], None] | None = None  # run once before the next commit
        # Fail the next commit once: "500" (an error that echoes the request's Authorization header, as a careless
        # proxy might), "drop" (the connection closes, nothing committed) or "drop-after" (committed, then the
        # connection closes before the reply: the client cannot tell that it landed).
        self.commit_fault: str | None = None
        self.server = ThreadingHTTPServer((host, port), _make_handler(self))
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        """The files of ``repo_id`` on main: path -> content."""
        repo = self.repo(repo_type, repo_id)
        return repo.commits[repo.branches["main"]]

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(
                404, "RepoNotFound", f"Repository Not Found for url: {repo_type}s/{repo_id}"
            ) from None

    # ------------------------------------------------------------------ API handlers
    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        if (
            repo_type,
            repo_id,
        ) in self.repos:  # the real Hub also returns the url on 409 (exist_ok relies on it)
            raise HubError(409, None, "You already created this repo", url=url)
        self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type)
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def preupload(self, repo: Repo, rev: str, body: dict) -> dict:
        files = repo.commits[repo.resolve(rev)] if rev in repo.branches or rev in repo.commits else {}
        out = []
        for f in body["files"]:
            existing = files.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_sha1(existing) if existing is not None else None,
                }
            )
        return {"files": out, "commitOid": repo.branches.get(rev)}

    def commit(self, repo: Repo, rev: str, raw: bytes) -> dict:
        if self.before_commit is not None:  # e.g. another client's commit landing first
            hook, self.before_commit = self.before_commit, None
            hook(repo)
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        with repo.lock:
            head = repo.branches.get(rev)
            if head is None and rev in repo.commits:
                raise HubError(400, None, "Cannot commit to a commit oid, use a branch")
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head]) if head else {}
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, None, "only base64 encoding supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                elif key == "lfsFile":
                    raise HubError(400, None, "fake hub: LFS/Xet uploads are not supported")
            oid = repo.commit(header["summary"], files, head, branch=rev)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
            "commitMessage": header["summary"],
            "pullRequestUrl": None,
        }

    def info(self, repo: Repo, rev: str) -> dict:
        sha = repo.resolve(rev)
        files = repo.commits[sha]
        return {
            "id": repo.repo_id,
            "_id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }

    def tree(self, repo: Repo, rev: str, sub: str, recursive: bool) -> list[dict]:
        files = repo.commits[repo.resolve(rev)]
        sub = sub.strip("/")
        base = sub + "/" if sub else ""
        if sub and sub in files:
            raise HubError(404, "EntryNotFound", f"{sub} is a file, not a folder")
        entries: dict[str, dict] = {}
        for path, content in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):  # folders on the way down
                folder = base + "/".join(rest[:i])
                entries.setdefault(
                    folder,
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(folder.encode()).hexdigest(),
                        "size": 0,
                        "path": folder,
                    },
                )
            if recursive or len(rest) == 1:
                entries[path] = {"type": "file", "oid": git_sha1(content), "size": len(content), "path": path}
        if sub and not entries:
            raise HubError(404, "EntryNotFound", f"{sub} does not exist on {rev}")
        return list(entries.values())


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(
                status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
            )

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _commit(self, repo: Repo, rev: str) -> dict:
            """``hub.commit``, failing as ``hub.commit_fault`` asks (once)."""
            body, (fault, hub.commit_fault) = self._body(), (hub.commit_fault, None)
            if fault == "500":
                raise HubError(500, None, f"fake hub: internal error ({self.headers.get('Authorization')})")
            if fault == "drop":
                raise DropConnection
            reply = hub.commit(repo, rev, body)
            if fault == "drop-after":
                raise DropConnection
            return reply

        def _dispatch(self, method: str):
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            hub.requests.append((method, path))
            try:
                if method == "POST" and path == "/api/repos/create":
                    return self._json(*hub.create_repo(json.loads(self._body())))
                if method == "POST" and path == "/api/validate-yaml":
                    self._body()
                    return self._json(200, {"errors": [], "warnings": []})
                if path == "/api/whoami-v2":
                    return self._json(200, {"type": "user", "name": "user", "orgs": [], "auth": {}})
                if m := API_RE.match(path):
                    plural, repo_id, action, rev, sub = m.groups()
                    repo = hub.repo(TYPES[plural], repo_id)
                    rev = unquote(rev) if rev else "main"
                    if method == "POST" and action == "preupload":
                        return self._json(200, hub.preupload(repo, rev, json.loads(self._body())))
                    if method == "POST" and action == "commit":
                        return self._json(200, self._commit(repo, rev))
                    if method in ("GET", "HEAD") and action in (None, "revision"):
                        return self._json(200, hub.info(repo, rev))
                    if method == "GET" and action == "tree":
                        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                        return self._json(200, hub.tree(repo, rev, unquote(sub or ""), recursive))
                if (m := RESOLVE_RE.match(path)) and method in ("GET", "HEAD"):
                    plural, repo_id, rev, filename = m.groups()
                    repo = hub.repo(TYPES.get(plural or "models"), repo_id)
                    sha = repo.resolve(unquote(rev))
                    content = repo.commits[sha].get(unquote(filename))
                    if content is None:
                        raise HubError(404, "EntryNotFound", "Entry not found")
                    etag = git_sha1(content)
                    return self._send(
                        200,
                        content,
                        {
                            "Content-Type": "application/octet-stream",
                            "ETag": f'"{etag}"',
                            "X-Repo-Commit": sha,
                            "Content-Length": str(len(content)),
                        },
                        head=method == "HEAD",
                    )
                raise HubError(404, None, f"fake hub: no route for {method} {path}")
            except DropConnection:
                self.close_connection = True
                return None
            except HubError as e:
                headers = {"X-Error-Message": e.msg}
                if e.code:
                    headers["X-Error-Code"] = e.code
                # hf_hub_download caches "file does not exist at commit X" from this header
                if e.code == "EntryNotFound" and (m := RESOLVE_RE.match(path)):
                    try:
                        headers["X-Repo-Commit"] = hub.repo(
                            TYPES.get(m.group(1) or "models"), m.group(2)
                        ).resolve(unquote(m.group(3)))
                    except HubError:
                        pass
                if method == "HEAD":
                    return self._send(e.status, b"", headers, head=True)
                return self._json(e.status, {"error": e.msg, **e.extra}, headers)

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

    return Handler
