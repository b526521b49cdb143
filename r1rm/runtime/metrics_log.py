"""Per-step metrics: `<output_dir>/metrics.jsonl` (append, flushed), TensorBoard when installed,
Weights & Biases when a project is set. Only the main process writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from r1rm.data.files import write_text_atomic
from r1rm.errors import MissingDependencyError

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
    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True,
                 wandb_project: str | None = None, run_config: dict | None = None):
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        self.path = Path(out_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after(self.path, resume_step)
        self._f = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self.tb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise MissingDependencyError("runtime.wandb_project is set but wandb is not installed",
                                             fix="pip install wandb, or unset runtime.wandb_project") from None
            self.wandb = wandb.init(project=wandb_project, config=run_config, dir=str(out_dir), resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
