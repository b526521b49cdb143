"""Per-step metrics: `<output_dir>/metrics.jsonl` (append, flushed; always written) and the
experiment trackers runtime.report_to names (runtime.tracking, through the accelerator's).
Only the main process writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1rm.data.files import write_text_atomic

METRICS = "metrics.jsonl"


def truncate_after(path: Path, step: int) -> None:
    """Drop rows logged after `step` (a resumed run logs them again), atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: it and anything after it go
        if row.get("step", 0) <= step:
            keep.append(line)
    write_text_atomic(path, "".join(x + "\n" for x in keep))


class MetricsLog:
    """metrics.jsonl, and the trackers of `acc` (an Accelerator built with `log_with=names`),
    started here on the main process — continuing the recorded tracker runs when `resume_step` > 0."""

    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool, resume_step: int = 0, acc=None,
                 trackers: list[str] | None = None, explicit: bool = False, project: str = "r1rm",
                 run_config: dict | None = None):
        self.enabled = enabled
        self.acc = acc
        if not enabled:
            return
        self.path = Path(out_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after(self.path, resume_step)
        self._f = open(self.path, "a", encoding="utf-8")
        if acc is not None:
            from r1rm.runtime.tracking import start

            start(acc, Path(out_dir), names=trackers or [], explicit=explicit, project=project,
                  resume_step=resume_step, run_config=run_config)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.acc is not None:
            from r1rm.runtime.tracking import scalars

            self.acc.log(scalars(metrics), step=step)

    def close(self) -> None:
        """metrics.jsonl; the trackers finish in `Accelerator.end_training`."""
        if self.enabled:
            self._f.close()
