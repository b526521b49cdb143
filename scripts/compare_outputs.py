"""Compare two folders written by scripts/behaviour_snapshot.sh: did a refactor change behaviour?

    python scripts/compare_outputs.py BEFORE AFTER

Every file must exist in both. Files are equal when their bytes are; a JSON / JSONL file that differs
in bytes is equal when its values are, after dropping wall-clock keys (timings, dates, paths of the
two folders) and mapping the keys renamed on 2026-12-06 (rl.stress_* -> rl.stress.*, the consistency
judge -> rl.consistency.*); config.yaml files are skipped, not compared (key names and order may
move). Hashes of files' modification times (build-data's `clean_key`, eval's `model.stamp`) and
the Python `random` and numpy global states in accelerate's random_states_*.pkl (unseeded and
unused by r1rm: they differ between two runs of the same code) are left out; torch's must match. Run both snapshots into the same folder path (moving the
first away before the second): keys hash absolute paths. Prints one line per differing file and exits 1 if any differs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from r1rm.config import RENAMED_KEYS

TIMING = re.compile(r"(^time_|_time$|_s$|_sec$|per_s|elapsed|wall|timestamp|^date$|^started|^finished|tokens_per"
                    r"|^clean_key$|^model\.stamp$)")
# the config keys renamed on 2026-12-06 (r1rm.config.RENAMED_KEYS) as they appear in saved identities,
# and the RL metric / trainer-state keys renamed with them
RENAMED = {**RENAMED_KEYS, **{k.split(".", 1)[1]: v.split(".", 1)[1] for k, v in RENAMED_KEYS.items() if k.startswith("rl.")},
           "judge_calls": "consistency_calls", "judge_failures": "consistency_failures", "judge": "consistency"}


def _key(k: str) -> str:
    return RENAMED.get(k, k)


def normalise(obj, roots: tuple[str, ...]):
    """Values with timing keys dropped, renamed keys mapped and the run folders' paths made relative."""
    if isinstance(obj, dict):
        return {_key(k): normalise(v, roots) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [normalise(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            obj = obj.replace(r, "<run>")
        return obj
    return obj


def _load(path: Path, roots: tuple[str, ...]):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [normalise(json.loads(line), roots) for line in text.splitlines() if line.strip()]
    return normalise(json.loads(text), roots)


def _same_rng_states(b: Path, a: Path) -> bool:
    """accelerate's RNG snapshot: step and torch's states must match; Python's and numpy's are unseeded."""
    import torch

    vb, va = (torch.load(p, weights_only=False) for p in (b, a))
    if set(vb) != set(va):
        return False
    for k in set(vb) - {"random_state", "numpy_random_seed"}:
        x, y = vb[k], va[k]
        same = bool((x == y).all()) if hasattr(x, "shape") and x.shape == getattr(y, "shape", None) else x == y
        if not same:
            return False
    return True


def compare(before: Path, after: Path) -> list[str]:
    """One line per file that differs (missing, extra, bytes, or values)."""
    files_b = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_a = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    out = [f"only in {before}: {p}" for p in sorted(files_b - files_a)]
    out += [f"only in {after}: {p}" for p in sorted(files_a - files_b)]
    roots = tuple(sorted((str(before), str(after)), key=len, reverse=True))
    for rel in sorted(files_b & files_a):
        b, a = before / rel, after / rel
        if b.read_bytes() == a.read_bytes() or rel.name == "config.yaml":
            continue
        if rel.name.startswith("random_states_") and rel.suffix == ".pkl":
            if _same_rng_states(b, a):
                continue
            out.append(f"RNG states differ: {rel}")
        elif rel.suffix in (".json", ".jsonl"):
            vb, va = _load(b, roots), _load(a, roots)
            if vb == va:
                continue
            out.append(f"values differ: {rel}")
        else:
            out.append(f"bytes differ: {rel}")
    return out


def main(argv: list[str]) -> int:
    before, after = Path(argv[1]), Path(argv[2])
    diffs = compare(before, after)
    for line in diffs:
        print(line)
    n = sum(1 for p in after.rglob("*") if p.is_file())
    print(f"{n} files compared, {len(diffs)} differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
