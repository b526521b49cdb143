"""The files a build-data run writes, and when a rerun may reuse the clean stage's shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from r1rm.config import Config
from r1rm.data.files import loads_json

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
FAILURES = "failures.jsonl"
MANIFEST_VERSION = 1


def _file_stats(path: str) -> list:
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[str(p), st.st_size, st.st_mtime_ns]]
    if p.is_dir():
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()]
    return [[str(p), None, None]]


def _source_stats(src) -> list:
    """What a source's rows come from: its files' stats; for a hub id, snapshot or parquet folder the files
    r1rm.data.hub resolves (a hub id's snapshot folder names its revision, so a new revision is a new key)."""
    paths = [src.path] if isinstance(src.path, str) else list(src.path or [])
    if src.format in ("synthetic", "canonical", "hf_disk"):
        return [_file_stats(p) for p in paths]
    from r1rm.data.hub import resolve_data

    out = []
    for p in paths:
        data = resolve_data(p, subset=src.subset, split=src.split, prefer_splits=("train",), key=f"build.sources[{src.name}].path")
        out.append([str(data.folder), [_file_stats(str(f)) for f in data.files]])
    return out


def clean_key(cfg: Config) -> str:
    """Hash of everything the clean stage depends on: sources (and their files' sizes and
    mtimes), cleaning settings, seed, pixel bounds, and the captioner in caption mode."""
    b = cfg.build
    settings = b.model_dump(mode="json", exclude={"teacher", "cmkd", "curriculum", "chunk_size"})
    files = [_source_stats(s) for s in b.sources]
    captioner = None
    if b.mode == "caption":
        captioner = [cfg.engine.kind, cfg.engine.model_name or cfg.model.path, cfg.generation.max_new_tokens]
    blob = json.dumps([MANIFEST_VERSION, settings, files, cfg.seed, cfg.model.min_pixels, cfg.model.max_pixels,
                       cfg.data.prompt, captioner], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def reusable(out: Path, key: str) -> dict | None:
    """The existing manifest when its clean stage matches `key`, is complete, and its shards are intact."""
    from r1rm.data.cleaning import content_hash

    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = loads_json(path.read_bytes(), allow_nan=True)
    except ValueError:  # LineError included: a damaged manifest is rebuilt
        return None
    if manifest.get("clean_key") != key or not manifest.get("clean_complete"):
        return None
    files = manifest.get("shards", [])
    if not all((out / f["path"]).is_file() for f in files) or content_hash(out, files) != manifest.get("content_sha256"):
        return None
    return manifest
