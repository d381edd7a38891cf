"""Where a run's inputs came from: its data's manifest (with a checksum), the runs its spec refers to, its
checkpoints and their steps. Files are read directly (JSON, safetensors headers): no torch, no webdataset."""

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from hlrp_lab.lib.layout import WEIGHTS, RunLayout
from hlrp_lab.lib.runs import local_run_references, read_status, run_dir_spec_name, saved_mode

MANIFEST = "manifest.json"  # hlrp_lab.data.shards.MANIFEST (that module imports webdataset)
REMOTE_PREFIXES = ("http://", "https://", "pipe:", "s3://", "gs://", "hf://")
HEADER_LIMIT = 100 << 20  # a safetensors JSON header longer than this is not one


def spec_root(run_dir: Path, spec: dict) -> Path:
    """The folder the run was started from, which relative paths in its spec are relative to: ``run_dir``
    less its saved ``meta.run_dir`` (``data/{spec}_{ts}``), else the current directory."""
    saved = Path(str(spec.get("meta", {}).get("run_dir", "")))
    parts, resolved = saved.parts, run_dir.resolve().parts
    if parts and not saved.is_absolute() and resolved[-len(parts) :] == parts:
        return Path(*resolved[: -len(parts)])
    return Path.cwd()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """The JSON of ``path``; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def manifests(data: dict, root: Path) -> list[Path] | str:
    """The manifest files of a spec's ``data`` block: of ``data.shards`` (a folder, or the folder of a pattern)
    or of ``data.source``'s shards under ``data.cache_dir`` (the manifest records the source's settings and
    image size). A string says why there is none to read."""
    shards, source = data.get("shards"), data.get("source")
    if isinstance(shards, str):
        if shards.startswith(REMOTE_PREFIXES):
            return f"remote shards {shards}: not checked"
        folder = root / shards
        path = (folder if folder.is_dir() else folder.parent) / MANIFEST
        return [path] if path.is_file() else f"no {MANIFEST} beside {shards}"
    if not isinstance(source, dict) or "cache_dir" not in data:
        return "no data block with shards or a source"
    settings = {k: v for k, v in source.items() if k != "name"}
    found = [
        path
        for path in sorted((root / str(data["cache_dir"])).glob(f"{source.get('name')}-*/{MANIFEST}"))
        if (m := read_json(path)) is not None
        and m.get("source_args") == settings
        and m.get("image_size") == data.get("image_size")
    ]
    return found or f"no {MANIFEST} of this {source.get('name')} source under {data['cache_dir']}"


def manifest_row(path: Path) -> dict[str, Any]:
    """What a manifest says of its shards, with its checksum."""
    manifest = read_json(path) or {}
    shards = manifest.get("shards") if isinstance(manifest.get("shards"), list) else []
    return {
        "manifest": str(path),
        "sha256": sha256(path),
        "source": manifest.get("source"),
        "shards": len(shards),
        "episodes": manifest.get("num_episodes"),
        "frames": manifest.get("num_frames"),
        "image size": manifest.get("image_size"),
    }


def references(spec: dict, root: Path) -> list[dict[str, Any]]:
    """The runs the spec names (pinned ``latest:`` references, ``train.init_from``, ``data.source.laq``, ...):
    key, value, and whether that run is there, its status and mode."""
    rows = []
    for key, value in local_run_references(spec):
        if key == "meta.run_dir":
            continue
        path = RunLayout.run_dir_of(root / value)
        name = run_dir_spec_name(path.name)
        layout = RunLayout(path, name) if name else None
        there = layout is not None and layout.spec_file.is_file()
        status = (read_status(layout) or {}).get("status") if there else None
        rows.append(
            {
                "key": key,
                "value": value,
                "found": "yes" if there else "no",
                "status": status or "",
                "mode": (saved_mode(layout) or "") if there else "",
            }
        )
    return rows


def weights_step(path: Path) -> int | None:
    """The ``step`` a safetensors file's header records; None if it has none or the file is not whole."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > HEADER_LIMIT:
                return None
            header = json.loads(file.read(length))
        return int(header["__metadata__"]["step"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def checkpoints(layout: RunLayout) -> list[dict[str, Any]]:
    """Every file and folder of ``model/``: its size and, for weights, the step it holds."""
    rows = []
    for path in sorted(layout.model.glob("*")) if layout.model.is_dir() else []:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        step = weights_step(path) if path.name.endswith(WEIGHTS) else None
        rows.append({"name": path.name, "size": sum(p.stat().st_size for p in files), "step": step})
    return rows
