"""What the model-driven stages (caption, teacher, cmkd) share: the run's one engine, loaded on
first use, requests sent in chunks, the shard records they read and the bucketed outputs they write."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from r1rm.config import Config
from r1rm.data.files import atomic_path, jsonl_line


def engine_id(cfg: Config) -> str:
    return f"{cfg.engine.kind}:{cfg.engine.model_name or cfg.model.path}"


class LazyEngine:
    """Builds the run's engine on first use (a fully cached run never loads a model)."""

    def __init__(self, cfg: Config):
        self.cfg, self.engine = cfg, None

    def __call__(self):
        if self.engine is None:
            from r1rm.engines import make_engine

            self.engine = make_engine(self.cfg)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def chunk_size(cfg: Config, override: int | None) -> int:
    return override or max(cfg.engine.batch_size, cfg.engine.concurrency)


def chunks(items: Iterator, size: int) -> Iterator[list]:
    buf: list = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def shard_records(out: Path, manifest: dict) -> Iterator:
    """The records of the clean stage's shards, in order (labels optional)."""
    from r1rm.data.records import read_records

    for f in manifest["files"]:
        yield from read_records(out / f, image_root=out, require_label=False)


class Buckets:
    """Temp JSONL files per bucket, concatenated into one output in a chosen bucket order."""

    def __init__(self, out: Path, name: str):
        self.out, self.name, self.files, self.counts = out, name, {}, Counter()

    def add(self, bucket: str, row: dict) -> None:
        if bucket not in self.files:
            self.files[bucket] = open(self.out / f".{self.name}.{bucket}.tmp", "w", encoding="utf-8")
        self.files[bucket].write(jsonl_line(row))
        self.counts[bucket] += 1

    def write(self, order: list[str]) -> int:
        with atomic_path(self.out / self.name) as tmp, open(tmp, "w", encoding="utf-8") as dest:
            for bucket in order:
                f = self.files.get(bucket)
                if f is None:
                    continue
                f.close()
                with open(f.name, encoding="utf-8") as src:
                    shutil.copyfileobj(src, dest)
                os.unlink(f.name)
        return sum(self.counts[b] for b in order)
