"""Experiment trackers (`runtime.report_to`) through accelerate's: the one module that touches
tracker libraries (TensorBoard, W&B, MLflow and whatever else accelerate knows).

- `resolve`: "all" = every tracker accelerate finds installed (none is fine), "none" = none, a
  list names them — each must be installed (exit 2 with the install command otherwise).
- `start`: the main process starts them (`Accelerator.init_trackers`), says once which, and
  records each tracker run in `<output_dir>/trackers.json`. A run resumed from a checkpoint passes
  them back and continues the same tracker run: W&B by run id (resume="allow"), MLflow by run_id,
  TensorBoard in the same folder with what a killed run logged after the resumed step purged
  (`purge_step`), as metrics.jsonl drops those rows.
- W&B without a login: the default ("all") logs offline and says so; naming wandb is exit 2.
  MLflow uses MLFLOW_TRACKING_URI or MLflow's default store.
- `log_results`: one-shot results of commands that train nothing (eval's accuracy table, vote's
  curve with k as the step) through a throwaway Accelerator's trackers.
metrics.jsonl (runtime.metrics_log) is written whatever report_to says.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from r1rm.data.files import write_json_atomic
from r1rm.errors import ConfigError, MissingDependencyError

TRACKERS_FILE = "trackers.json"
TB_DIR = "tensorboard"
TRACK_EXTRA = "pip install 'r1rm[track]'"
IN_EXTRA = ("tensorboard", "wandb", "mlflow")  # what the track extra installs
# the package each tracker needs, where its name is not the tracker's
_PACKAGE = {"mlflow": "mlflow-skinny", "comet_ml": "comet-ml"}


def known() -> list[str]:
    """Every tracker name accelerate accepts."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def installed() -> list[str]:
    """The trackers accelerate finds installed, in its order."""
    from accelerate.tracking import get_available_trackers

    return [str(t) for t in get_available_trackers()]


def resolve(report_to: str | list[str]) -> list[str]:
    """The tracker names `runtime.report_to` asks for; raises for an unknown or uninstalled one."""
    if report_to == "none":
        return []
    if report_to == "all":
        names = installed()
        if "mlflow" in names:
            _check_mlflow_store()
        return names
    names = list(dict.fromkeys(report_to))
    valid = known()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"runtime.report_to names unknown tracker(s) {', '.join(map(repr, unknown))}",
                          fix=f"use some of {', '.join(valid)}; or all / none")
    have = installed()
    missing = [n for n in names if n not in have]
    if missing:
        pkgs = " ".join(_PACKAGE.get(n, n) for n in missing)
        install = f"{TRACK_EXTRA} (or pip install {pkgs})" if set(missing) <= set(IN_EXTRA) else f"pip install {pkgs}"
        raise MissingDependencyError(f"runtime.report_to asks for {', '.join(missing)}, which is not installed",
                                     fix=f"{install}; or drop it from runtime.report_to")
    if "wandb" in names:
        _wandb_mode(explicit=True)  # no W&B login: refused now, before any work
    if "mlflow" in names:
        _check_mlflow_store()
    return names


def _check_mlflow_store() -> None:
    """MLflow's store is a database (MLflow 3's default is sqlite:///mlflow.db) but sqlalchemy, which
    mlflow-skinny leaves out, is missing: refused now rather than failing inside MLflow."""
    import importlib.util

    import mlflow

    uri = mlflow.get_tracking_uri()
    if "://" in uri and uri.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        if importlib.util.find_spec("sqlalchemy") is None or importlib.util.find_spec("alembic") is None:
            raise MissingDependencyError(f"MLflow's tracking store {uri} needs sqlalchemy and alembic",
                                         fix=f"{TRACK_EXTRA} (or pip install sqlalchemy alembic); or set "
                                             "MLFLOW_TRACKING_URI to a server (http://...)")


def _wandb_mode(explicit: bool) -> str | None:
    """None (W&B's own mode), or "offline" when W&B has no login and the default ("all") chose it;
    an explicit wandb without a login is an error, not a silent change."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    import wandb

    try:
        logged_in = wandb.login(prompt=False, verify=False)
    except TypeError:  # wandb before `prompt`
        logged_in = wandb.api.api_key is not None
    if logged_in:
        return None
    if explicit:
        raise ConfigError("runtime.report_to names wandb, but W&B has no API key",
                          fix="run `wandb login` (or set WANDB_API_KEY); or WANDB_MODE=offline to log locally "
                              "and `wandb sync` later")
    return "offline"


def _saved(out: Path) -> dict:
    path = out / TRACKERS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def init_kwargs(names: list[str], out: Path, *, project: str, resume_step: int, explicit: bool,
                purge_step: int) -> tuple[dict, list[str]]:
    """accelerate's per-tracker init kwargs (the saved tracker runs when resuming at step > 0), and
    the words that describe each tracker in the one line `start` prints. TensorBoard hides what an
    earlier run in this folder logged at `purge_step` or later."""
    saved = _saved(out) if resume_step > 0 else {}
    kwargs: dict = {}
    said = []
    for name in names:
        if name == "tensorboard":
            kwargs[name] = {"purge_step": purge_step}
            said.append(f"tensorboard ({out / TB_DIR / project})")
        elif name == "wandb":
            w = {"name": out.name, "resume": "allow"}
            if "WANDB_DIR" not in os.environ:
                w["dir"] = str(out)
            if saved.get("wandb", {}).get("run_id"):
                w["id"] = saved["wandb"]["run_id"]
            mode = _wandb_mode(explicit)
            if mode:
                w["mode"] = mode
            kwargs[name] = w
            said.append("wandb" + (" (offline: no W&B login; `wandb login`, then `wandb sync`)" if mode else ""))
        elif name == "mlflow":
            import mlflow

            uri = mlflow.get_tracking_uri()
            m = {"run_name": out.name}
            if uri.startswith("sqlite:///"):
                # a new experiment's artifacts next to its database (MLflow's default: ./mlruns wherever it runs)
                m["logging_dir"] = str(Path(uri[len("sqlite:///"):]).parent / "mlruns")
            if saved.get("mlflow", {}).get("tracking_uri") == uri:
                m["run_id"] = saved["mlflow"]["run_id"]
            kwargs[name] = m
            said.append(f"mlflow ({uri})")
        else:
            said.append(name)
    return kwargs, said


def _record(acc, out: Path) -> None:
    """`<output_dir>/trackers.json`: each started tracker's run, for a resume to continue."""
    runs: dict = {}
    for tracker in acc.trackers:
        if tracker.name == "wandb":
            runs["wandb"] = {"run_id": tracker.run.id, "project": tracker.run.project}
        elif tracker.name == "mlflow":
            import mlflow

            runs["mlflow"] = {"run_id": tracker.active_run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        elif tracker.name == "tensorboard":
            runs["tensorboard"] = {"logging_dir": str(tracker.logging_dir)}
    write_json_atomic(out / TRACKERS_FILE, runs)


def flat_config(dump: dict, prefix: str = "") -> dict:
    """A config dump as dotted keys with scalar values (lists and None as text): every tracker's
    hyperparameter table takes it."""
    out: dict = {}
    for k, v in dump.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, bool | int | float | str) else str(v)
    return out


def start(acc, out: Path, *, names: list[str], explicit: bool, project: str, resume_step: int,
          run_config: dict | None, purge_step: int | None = None) -> None:
    """Start the trackers `acc` was built with (main process), say once which, record their runs.
    The configuration goes in at a fresh start only (a resume may change settings such as max_steps,
    which MLflow's immutable params refuse). TensorBoard events at `purge_step` (default: after the
    resumed step — the killed run's, which metrics.jsonl drops too) or later are purged."""
    if not acc.is_main_process:
        return
    if not names:
        say_none()
        return
    kwargs, said = init_kwargs(names, out, project=project, resume_step=resume_step, explicit=explicit,
                               purge_step=resume_step + 1 if purge_step is None else purge_step)
    config = flat_config(run_config) if run_config is not None and resume_step == 0 else None
    continuing = resume_step > 0 and bool(_saved(out))
    acc.init_trackers(project, config=config, init_kwargs=kwargs)
    _record(acc, out)
    print("trackers: " + ", ".join(said) + (" — continuing the recorded runs" if continuing else ""), file=sys.stderr)


def say_none() -> None:
    print("trackers: none (runtime.report_to; pip install 'r1rm[track]' for TensorBoard, W&B, MLflow)",
          file=sys.stderr)


def scalars(values: dict) -> dict:
    """The finite numbers of a metrics row (what every tracker takes as a scalar)."""
    return {k: v for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def make_accelerator_for_results(names: list[str], out: Path):
    """An Accelerator whose only job is the trackers of a command that trains nothing."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(log_with=names or None,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TB_DIR)))


def log_results(cfg, out: Path, rows: list[tuple[int, dict]], *,
                table: tuple[str, list[str], list[list]] | None = None) -> None:
    """Log a finished command's results — (step, metrics) rows, and a table (name, columns, rows)
    where the tracker has tables (W&B; TensorBoard gets markdown text, MLflow a JSON artifact) — to
    runtime.report_to's trackers as a new tracker run (a rerun's results replace the earlier ones
    in TensorBoard's folder). Main process only."""
    names = resolve(cfg.runtime.report_to)
    if not names:
        say_none()
        return
    acc = make_accelerator_for_results(names, out)
    first = min((step for step, _ in rows), default=0)
    start(acc, out, names=names, explicit=cfg.runtime.report_to != "all", project=cfg.runtime.project,
          resume_step=0, run_config=cfg.model_dump(mode="json"), purge_step=first)
    for step, values in rows:
        acc.log(scalars(values), step=step)
    if table is not None:
        _log_table(acc, *table, step=first)
    for tracker in acc.trackers:
        tracker.finish()


def _log_table(acc, name: str, columns: list[str], data: list[list], *, step: int) -> None:
    for tracker in acc.trackers:
        if hasattr(tracker, "log_table"):
            tracker.log_table(name, columns=columns, data=data, step=step)
        elif tracker.name == "tensorboard":
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(map(str, r)) + " |" for r in data]
            tracker.writer.add_text(name, "\n".join(lines), global_step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_dict({"columns": columns, "data": data}, f"{name}.json")


def flat_scalars(values: dict, prefix: str = "") -> dict:
    """Nested results as `a/b/c` keys, finite numbers only."""
    out: dict = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flat_scalars(v, f"{prefix}{k}/"))
        else:
            out.update(scalars({f"{prefix}{k}": v}))
    return out


def log_eval(cfg, out: Path, metrics: dict) -> None:
    """eval's results: every accuracy block's overall / macro / benchmark extras / per-category
    accuracy and the rates as `eval/...` metrics at step 0, and the accuracy table (blocks × overall,
    macro, categories) as a tracker table."""
    values = {f"eval/{k}": v for k, v in metrics.items() if k != "accuracy"}
    cats = sorted({c for b in metrics["accuracy"].values() for c in b["per_category"]})
    data = []
    for name, block in metrics["accuracy"].items():
        per_cat = {c: block["per_category"][c]["accuracy"] for c in block["per_category"]}
        values.update(flat_scalars({k: v for k, v in block.items() if k != "per_category"}, f"eval/{name}/"))
        values.update(flat_scalars(per_cat, f"eval/{name}/category/"))
        data.append([name, block.get("overall"), block.get("macro"), *[per_cat.get(c) for c in cats]])
    log_results(cfg, out, [(0, values)], table=("eval/accuracy", ["accuracy", "overall", "macro", *cats], data))


def log_vote(cfg, out: Path, votes: dict) -> None:
    """vote's curve at step k: the plain pair accuracy of each rule (pooled and per order) as
    `vote/pairs/...`, and the benchmark's headline figures per rule and order block (votes'
    `table` rows) as `vote/<rule>/<block>/<figure>`; the headline table as a tracker table."""
    rows: dict[int, dict] = {}
    for p in votes["curve"]:
        rows.setdefault(p["k"], {}).update(flat_scalars({k: v for k, v in p.items() if k != "k"}, "vote/pairs/"))
    for order, curve in votes.get("per_order", {}).items():
        for p in curve:
            rows.setdefault(p["k"], {}).update(flat_scalars({k: v for k, v in p.items() if k != "k"},
                                                            f"vote/pairs/{order}/"))
    table = votes.get("table") or []
    for r in table:
        figures = {k: v for k, v in r.items() if k not in ("k", "rule", "order")}
        rows.setdefault(r["k"], {}).update(flat_scalars(figures, f"vote/{r['rule']}/{r['order']}/"))
    columns = list(table[0]) if table else []
    log_results(cfg, out, sorted(rows.items()),
                table=("vote/headline", columns, [[r.get(c) for c in columns] for r in table]) if table else None)
