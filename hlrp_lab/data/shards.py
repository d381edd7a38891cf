"""WebDataset shards: one sample per episode, size-bounded TAR files, and a manifest.

A sample is one episode under the key ``ep{index:06d}``: ``frames.npy`` (uint8 T,H,W,3), ``instruction.txt``,
``meta.json`` ({"task", "seed", "episode", "scene"}) and, where the source has them, ``actions.npy``
(float32 T-1,A), ``states.npy`` (float32 T,S), ``success.npy`` (bool T) and ``codes.npy`` (int64 T-k,K: latent
actions from ``hlrp-lab data label``). One sample per episode keeps a
scene's frames together, so frame pairs at any offset are cut after reading and the train/val split is by
scene. ``manifest.json`` is written last and lists every shard with its sample count, size and sha256.
"""

import functools
import glob
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from loguru import logger
from tqdm import tqdm

from hlrp_lab.data.episode import Episode
from hlrp_lab.lib.errors import SpecError

# webdataset's read buffer for local shards (its documented knob): tarfile reads a stream in 10 KB pieces,
# which the default 8 KB buffer turns into a system call each. Set GOPEN_BUFFER yourself to override.
os.environ.setdefault("GOPEN_BUFFER", str(1 << 20))
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ARRAYS = {  # sample key -> Episode field, for the optional arrays
    "actions.npy": "actions",
    "states.npy": "states",
    "success.npy": "success",
    "codes.npy": "codes",
}
KEY_DTYPES = {
    "frames.npy": "uint8 (T, H, W, 3)",
    "actions.npy": "float32 (T-1, A)",
    "states.npy": "float32 (T, S)",
    "success.npy": "bool (T,)",
    "codes.npy": "int64 (T-k, K)",
    "instruction.txt": "utf-8 text",
    "meta.json": '{"task": str, "seed": int, "episode": int, "scene": str}',
}
NPY_HEADER_READ = 4096  # bytes of an .npy file that hold its header
REMOTE_PREFIXES = ("http://", "https://", "pipe:", "s3://", "gs://", "hf://")


def episode_sample(index: int, episode: Episode) -> dict[str, Any]:
    """The WebDataset sample of episode number ``index``."""
    scene = episode.scene if episode.scene is not None else f"ep{index:06d}"
    sample = {
        "__key__": f"ep{index:06d}",
        "frames.npy": episode.frames,
        "instruction.txt": episode.instruction,
        "meta.json": {"task": episode.task, "seed": episode.seed, "episode": index, "scene": scene},
    }
    for key, field in ARRAYS.items():
        if getattr(episode, field) is not None:
            sample[key] = getattr(episode, field)
    return sample


def sample_scene(sample: dict[str, Any]) -> str:
    """The scene of a raw sample, without decoding its arrays."""
    return json.loads(sample["meta.json"])["scene"]


def decode_episode(sample: dict[str, Any]) -> Episode:
    """An Episode from a raw (undecoded) WebDataset sample."""
    meta = json.loads(sample["meta.json"])
    arrays = {field: load_npy(sample[key]) for key, field in ARRAYS.items() if key in sample}
    return Episode(
        frames=load_npy(sample["frames.npy"]),
        instruction=sample["instruction.txt"].decode("utf-8"),
        task=meta["task"],
        seed=meta["seed"],
        scene=meta["scene"],
        **arrays,
    )


def load_npy(data: bytes) -> np.ndarray:
    """A read-only array over the bytes of an ``.npy`` file; headers, the same across episodes, are parsed once
    (np.load re-parses each one with ``ast.literal_eval``, a third of the decode time here)."""
    header = npy_header_bytes(data)
    shape, fortran, dtype = npy_header(header)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=len(header))
    return array.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    return shape, fortran, dtype


def sha256(path: Path) -> str:
    """The file's SHA-256, read once per process while its size and modification time stay the same (a
    labelled data block hashes the LAQ weights each time its shard URLs are resolved)."""
    stat = path.stat()
    return file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.cache
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_shards(
    episodes: Iterable[Episode],
    out_dir: Path,
    *,
    name: str,
    source: str,
    source_args: dict,
    total: int | None = None,
    shard_size_mb: float = 256.0,
    extra: dict | None = None,
) -> dict:
    """Write ``{name}-{index:06d}.tar`` shards, then ``manifest.json`` (with ``extra`` keys); returns the
    manifest.

    A shard is closed once it holds ``shard_size_mb`` or more, so it exceeds that by less than one episode.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    num_frames, image_size, keys, instructions = 0, None, set(), set()
    pattern = str(out_dir / f"{name}-%06d.tar")
    # a fixed integer mtime: no PAX header per member (half the parsing) and byte-identical regenerations
    writer_args = {"maxsize": int(shard_size_mb * 1e6), "maxcount": 10**9, "verbose": 0, "mtime": 0}
    with wds.ShardWriter(pattern, **writer_args) as writer:
        for index, episode in enumerate(tqdm(episodes, total=total, desc="writing shards", unit="episode")):
            sample = episode_sample(index, episode)
            writer.write(sample)
            counts[Path(writer.fname).name] += 1
            num_frames += len(episode.frames)
            image_size = episode.frames.shape[1]
            keys.update(k for k in sample if not k.startswith("__"))
            instructions.add(episode.instruction)
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "source": source,
        "source_args": source_args,
        "image_size": image_size,
        "sample_unit": "episode",
        "num_samples": sum(counts.values()),
        "num_episodes": sum(counts.values()),
        "num_frames": num_frames,
        "keys": {key: KEY_DTYPES[key] for key in sorted(keys)},
        "instructions": sorted(instructions),
        "shards": [shard_entry(out_dir / file, count) for file, count in counts.items()],
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def shard_entry(path: Path, num_samples: int) -> dict:
    """A shard's line in the manifest."""
    return {
        "file": path.name,
        "num_samples": num_samples,
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }


def read_manifest(directory: Path) -> dict:
    """The manifest of ``directory``; SpecError if it is absent, not JSON or lists no shards."""
    path = directory / MANIFEST
    if not path.is_file():
        raise SpecError(f"{directory}: no {MANIFEST}; write shards with `hlrp-lab data ...`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpecError(
            f"{path}: not valid JSON ({err}); write the shards again with `hlrp-lab data ...`"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise SpecError(f"{path}: no list of shards; write the shards again with `hlrp-lab data ...`")
    return manifest


def unlisted_files(directory: Path, manifest: dict) -> list[str]:
    """Names of the files in ``directory`` that its manifest does not list (besides the manifest itself)."""
    listed = {shard["file"] for shard in manifest["shards"]} | {MANIFEST}
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in listed)


def scene_lengths(urls: list[str]) -> dict[str, int]:
    """Scene -> frames of its longest episode in the local shards at ``urls``, from each sample's meta.json
    and frames.npy header alone (tar headers are read, frames skipped); unreadable shards add what they
    hold before the damage."""
    lengths: dict[str, int] = {}
    for url in urls:
        try:
            add_scene_lengths(Path(url), lengths)
        except (OSError, EOFError, tarfile.TarError, ValueError, KeyError):
            continue  # the loader skips this shard's damaged part too
    return lengths


def add_scene_lengths(path: Path, lengths: dict[str, int]) -> None:
    """Add the scenes of the shard at ``path`` to ``lengths`` (see ``scene_lengths``)."""
    scenes: dict[str, str] = {}
    frames: dict[str, int] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            if suffix not in ("meta.json", "frames.npy") or (file := tar.extractfile(member)) is None:
                continue
            if suffix == "meta.json":
                scenes[key] = json.loads(file.read())["scene"]
            else:
                frames[key] = npy_header(npy_header_bytes(file.read(NPY_HEADER_READ)))[0][0]
            if key in scenes and key in frames:
                scene = scenes.pop(key)
                lengths[scene] = max(lengths.get(scene, 0), frames.pop(key))


def npy_header_bytes(data: bytes) -> bytes:
    """The header part of the bytes of an ``.npy`` file (the first ``NPY_HEADER_READ`` bytes suffice)."""
    length_bytes = 2 if data[6] == 1 else 4  # format version 1.0 or 2.0+
    return data[: 8 + length_bytes + int.from_bytes(data[8 : 8 + length_bytes], "little")]


def missing_shards(urls: list[str]) -> list[str]:
    """The local ones of ``urls`` that are not files."""
    return [url for url in urls if not url.startswith(REMOTE_PREFIXES) and not Path(url).is_file()]


def manifest_of(urls: list[str]) -> dict | None:
    """The manifest beside the first of ``urls`` (shards written by ``hlrp-lab data``), if there is one."""
    folder = Path(urls[0]).parent
    return read_manifest(folder) if (folder / MANIFEST).is_file() else None


def verify_shards(directory: Path) -> list[str]:
    """Names of the shards whose size or sha256 differs from the manifest (or that are missing)."""
    bad = []
    for shard in tqdm(read_manifest(directory)["shards"], desc="verifying shards", unit="shard"):
        path = directory / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"] or sha256(path) != shard["sha256"]:
            bad.append(shard["file"])
    return bad


def shard_urls(directory: Path) -> list[str]:
    """The shard paths of ``directory``, in manifest order."""
    return [str(directory / shard["file"]) for shard in read_manifest(directory)["shards"]]


def expand_shards(pattern: str) -> list[str]:
    """Shard URLs from a directory with a manifest, a glob, a brace pattern, a local path or a URL."""
    if pattern.startswith(REMOTE_PREFIXES):
        return wds.shardlists.expand_urls(pattern)
    if Path(pattern).is_dir():
        return shard_urls(Path(pattern))
    urls = []
    for part in wds.shardlists.expand_urls(pattern):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        urls.extend(url for url in matches if Path(url).is_file())
    return urls


def raw_samples(urls: Iterable[dict]) -> Iterator[dict[str, Any]]:
    """Pipeline stage: the raw samples of each shard; a corrupt or truncated shard is skipped with a warning
    and reported downstream as ``{"__skipped__": url}`` (the samples before the damage are kept)."""
    for shard in urls:
        try:
            yield from wds.tarfile_samples([shard])
        except FileNotFoundError:
            logger.warning(f"missing shard {shard['url']}{manifest_note(shard['url'])}; skipping it")
            yield {"__skipped__": shard["url"]}
        except Exception as err:  # noqa: BLE001 - any damage means: skip the rest of this shard
            reason = err.args[0] if err.args else ""
            logger.warning(f"skipping corrupt shard {shard['url']}: {type(err).__name__}: {reason}")
            yield {"__skipped__": shard["url"]}


def manifest_note(url: str) -> str:
    """ " (listed in manifest.json)" when a manifest sits beside the local shard ``url``, else ""."""
    return f" (listed in {MANIFEST})" if (Path(url).parent / MANIFEST).is_file() else ""


def read_episodes(urls: str | list[str], skipped: list[str] | None = None) -> Iterator[Episode]:
    """The episodes of the shards at ``urls``, in order; corrupt shards' names are appended to ``skipped``."""
    for sample in raw_samples({"url": url} for url in wds.shardlists.expand_source(urls)):
        if "__skipped__" in sample:
            if skipped is not None:
                skipped.append(sample["__skipped__"])
            continue
        yield decode_episode(sample)


def cache_key(source: str, source_args: dict, image_size: int, extra: dict | None = None) -> str:
    """A short hash of everything that determines the shards' content (``extra``: what the source records in
    the manifest, such as the checksum of the LAQ weights that label it)."""
    text = json.dumps(
        [FORMAT_VERSION, source, source_args, image_size, *([extra] if extra else [])], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_shards(
    source: str,
    source_args: dict,
    image_size: int,
    generate: Callable[[], Iterable[Episode]],
    total: int,
    cache_root: Path = Path("data/cache"),
    extra: dict | None = None,
) -> Path:
    """``cache_root/{source}-{hash}``: generated once (into a temporary directory renamed into place), then reused.

    ``extra`` (manifest keys the source adds) is part of the hash."""
    target = cache_root / f"{source}-{cache_key(source, source_args, image_size, extra)}"
    if (target / MANIFEST).is_file():
        logger.info(f"reusing cached shards at {target}")
        return target
    tmp = cache_root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    logger.info(f"generating {total} {source} episodes into {target}")
    try:
        write_shards(
            generate(), tmp, name=source, source=source, source_args=source_args, total=total, extra=extra
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, target)
    return target


def publish(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; if another process got there first, keep its copy."""
    try:
        os.rename(tmp, target)
    except OSError:
        if (target / MANIFEST).is_file():
            logger.info(f"another process wrote {target} first; using it")
            shutil.rmtree(tmp)
            return
        shutil.rmtree(target)  # a directory without a manifest is not ours to reuse: replace it
        os.rename(tmp, target)
