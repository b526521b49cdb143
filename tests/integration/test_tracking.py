"""Experiment trackers (`runtime.report_to`) through accelerate's, on CPU with the tiny model:
TensorBoard read back with its EventAccumulator, W&B in offline mode, MLflow on a SQLite store in
tmp; a resumed sft continues each tracker run; eval's accuracy table and vote's curve reach them;
an unknown or uninstalled tracker is exit 2 with the fix. W&B / MLflow parts skip when those are
not installed (`pip install 'r1rm[track]'`)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

HAVE_WANDB = importlib.util.find_spec("wandb") is not None
# mlflow-skinny's default store (and ours in these tests) is SQLite, which needs sqlalchemy
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None and importlib.util.find_spec("sqlalchemy") is not None


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), 16, seed=3, levels=(1,), modality="image", prefix="train")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("held"), 3, seed=5, levels=(1, 4), modality="image", prefix="heldout")


WANDB_SKIP = pytest.mark.skipif(not HAVE_WANDB, reason="wandb not installed (pip install 'r1rm[track]')")
MLFLOW_SKIP = pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow-skinny / sqlalchemy not installed (pip install 'r1rm[track]')")


def tracker_env(mp: pytest.MonkeyPatch, wandb_dir: Path, mlflow_uri: str) -> None:
    """W&B offline under tmp, MLflow on a SQLite file under tmp; nothing reaches the network."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(wandb_dir))
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "WANDB_RUN_ID", "WANDB_RESUME"):
        mp.delenv(var, raising=False)
    wandb_dir.mkdir(exist_ok=True)


def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def mlflow_runs(uri: str, experiment: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def sft(tiny, data, out, names, max_steps):
    from conftest import run_cli

    return run_cli("sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={tiny}", f"data.train=[{data}]",
                   f"output_dir={out}", "runtime.progress=false", "runtime.log_every_steps=1",
                   f"sft.max_steps={max_steps}", "sft.save_every_steps=2", "sft.batch_size=4", "sft.micro_batch_size=2",
                   f"runtime.report_to=[{','.join(names)}]")


@pytest.fixture(scope="module")
def resumed(tiny, train_data, tmp_path_factory):
    """An sft run to step 3 with every tracker installed, killed after step 3 was logged but before its
    checkpoint was written (step-3 removed), then rerun to step 4: it resumes at step 2."""
    root = tmp_path_factory.mktemp("resumed")
    names = ["tensorboard"] + (["wandb"] if HAVE_WANDB else []) + (["mlflow"] if HAVE_MLFLOW else [])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "s"
    with pytest.MonkeyPatch.context() as mp:
        tracker_env(mp, root / "wandb_dir", uri)
        first = sft(tiny, train_data, out, names, 3)
        assert first.returncode == 0, first.stderr[-3000:]
        runs = json.loads((out / "trackers.json").read_text())
        shutil.rmtree(out / "checkpoints" / "step-0000003")
        second = sft(tiny, train_data, out, names, 4)
        assert second.returncode == 0, second.stderr[-3000:]
    logged = {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    return {"out": out, "names": names, "first": first, "second": second, "runs": runs, "logged": logged,
            "wandb_dir": root / "wandb_dir", "mlflow": uri}


def test_resumed_sft_says_its_trackers_and_keeps_their_runs(resumed):
    said = [line for line in resumed["first"].stderr.splitlines() if line.startswith("trackers: ")]
    assert len(said) == 1 and all(n in said[0] for n in resumed["names"])
    assert set(resumed["runs"]) == set(resumed["names"])
    assert "continuing the recorded runs" in resumed["second"].stderr
    assert json.loads((resumed["out"] / "trackers.json").read_text()) == resumed["runs"]
    assert sorted(resumed["logged"]) == [1, 2, 3, 4]


def test_tensorboard_resume_continues_the_steps_without_duplicates(resumed):
    # one folder, steps 1..4 once each (the killed run's step 3 purged), the values metrics.jsonl holds
    tb = scalars(resumed["out"] / "tensorboard" / "r1rm", "loss")
    assert [s for s, _ in tb] == [1, 2, 3, 4]
    assert [v for _, v in tb] == pytest.approx([resumed["logged"][s] for s in (1, 2, 3, 4)], rel=1e-6)


@WANDB_SKIP
def test_wandb_resume_is_the_same_run(resumed):
    run_id = resumed["runs"]["wandb"]["run_id"]
    halves = sorted(p.name for p in (resumed["wandb_dir"] / "wandb").glob("offline-run-*"))
    assert len(halves) == 2 and all(h.endswith(f"-{run_id}") for h in halves)


@MLFLOW_SKIP
def test_mlflow_resume_is_one_run_with_both_halves(resumed):
    import mlflow

    (run,) = mlflow_runs(resumed["mlflow"], "r1rm")
    assert run.info.run_id == resumed["runs"]["mlflow"]["run_id"]
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert {m.step for m in history} == {1, 2, 3, 4}
    last = max((m for m in history if m.step == 4), key=lambda m: m.timestamp)
    assert last.value == pytest.approx(resumed["logged"][4])
    # the config went in as params at the fresh start only (a resume may change sft.max_steps)
    assert run.data.params["sft.max_steps"] == "3" and run.data.params["runtime.project"] == "r1rm"


@pytest.fixture
def trackers_env(tmp_path, monkeypatch):
    tracker_env(monkeypatch, tmp_path / "wandb_dir", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_eval_table_and_vote_curve_reach_every_installed_tracker(cli, tiny, heldout, tmp_path, trackers_env):
    from r1rm.runtime.tracking import installed

    out = tmp_path / "e"
    proc = cli("eval", f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
               "generation.max_new_tokens=6", "engine.batch_size=4", f"eval.path={heldout}", "eval.k=2",
               "runtime.project=evaltest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the default (all): every installed tracker, said once
    said = [line for line in proc.stderr.splitlines() if line.startswith("trackers: ")]
    assert len(said) == 1 and all(n in said[0] for n in installed())
    metrics = json.loads((out / "metrics.json").read_text())
    logdir = out / "tensorboard" / "evaltest"
    for block in ("chosen_first", "chosen_second", "both_orders_mean", "both_orders_strict"):
        assert scalars(logdir, f"eval/{block}/overall") == [(0, pytest.approx(metrics["accuracy"][block]["overall"]))]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    assert "eval/accuracy/text_summary" in ea.Tags()["tensors"]  # the accuracy table, as markdown

    proc = cli("vote", f"output_dir={out}", "runtime.project=evaltest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    votes = json.loads((out / "votes.json").read_text())
    assert scalars(logdir, "vote/pairs/majority") == [(p["k"], pytest.approx(p["majority"])) for p in votes["curve"]]
    assert [s for s, _ in scalars(logdir, "vote/majority/both_orders_mean/overall")] == [1, 2]
    assert scalars(logdir, "eval/both_orders_mean/overall")  # eval's step 0 survives vote's steps 1..k
    if HAVE_MLFLOW:
        import mlflow

        runs = mlflow_runs(trackers_env, "evaltest")
        assert len(runs) == 2  # eval's and vote's
        ev = next(r for r in runs if "eval/both_orders_mean/overall" in r.data.metrics)
        assert ev.data.metrics["eval/both_orders_mean/overall"] == pytest.approx(
            metrics["accuracy"]["both_orders_mean"]["overall"])
        table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=ev.info.run_id,
                                                                     artifact_path="eval/accuracy.json")).read_text())
        assert table["columns"][:3] == ["accuracy", "overall", "macro"] and len(table["data"]) == 4


def test_unknown_or_uninstalled_tracker_is_exit_2(cli, tiny, heldout, tmp_path):
    from r1rm.runtime.tracking import known

    def refused(names: str):
        proc = cli("eval", f"model.path={tiny}", f"output_dir={tmp_path / 'e'}", f"eval.path={heldout}",
                   f"runtime.report_to={names}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert not (tmp_path / "e").exists()  # refused before generating anything
        return proc.stderr

    err = refused("[tensorbord]")
    assert "'tensorbord'" in err and "tensorboard" in err and "mlflow" in err
    absent = [n for n in known() if importlib.util.find_spec(n) is None and n != "mlflow"]
    if absent:
        assert f"pip install {absent[0].replace('_', '-')}" in refused(f"[tensorboard,{absent[0]}]")


def test_resolve_names_the_install_command_and_the_wandb_login(monkeypatch, tmp_path):
    from r1rm.errors import ConfigError, MissingDependencyError
    from r1rm.runtime import tracking

    assert tracking.resolve("none") == []
    assert tracking.resolve("all") == tracking.installed()
    assert tracking.resolve(["tensorboard", "tensorboard"]) == ["tensorboard"]
    monkeypatch.setattr(tracking, "installed", lambda: ["tensorboard"])
    with pytest.raises(MissingDependencyError) as e:
        tracking.resolve(["wandb", "mlflow"])
    assert "pip install 'r1rm[track]'" in e.value.fix and "mlflow-skinny" in e.value.fix
    if HAVE_WANDB:  # asked for explicitly without a login: refused (the default "all" logs offline instead)
        monkeypatch.setattr(tracking, "installed", lambda: ["wandb"])
        for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
        with pytest.raises(ConfigError, match="no API key") as e:
            tracking.resolve(["wandb"])
        assert "wandb login" in e.value.fix and "WANDB_MODE=offline" in e.value.fix
        assert tracking.init_kwargs(["wandb"], tmp_path, project="p", resume_step=0, explicit=False,
                                    purge_step=1)[0]["wandb"]["mode"] == "offline"


def test_flat_config_suits_every_trackers_hyperparameters():
    from r1rm.config import Config
    from r1rm.runtime.tracking import flat_config, flat_scalars

    flat = flat_config(Config().model_dump(mode="json"))
    assert flat["runtime.report_to"] == "all" and flat["sft.lr"] == Config().sft.lr
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat_scalars({"a": {"b": 1.0, "c": None, "d": float("nan"), "e": True}, "f": 2}) == {"a/b": 1.0, "f": 2}
