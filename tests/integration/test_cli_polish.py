"""The CLI where it used to rub (issue 24, item 7): no Hugging Face tqdm in r1rm's output, eval's bar
moving per batch, no best candidate named from undecided verdicts, a refused API key / unknown model
stopping the run at once, and a failed start leaving no output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fake_endpoint import Scripted


def _refusing(status: int) -> Scripted:
    """An OpenAI-compatible endpoint that answers every request with one HTTP error status."""
    msg = {401: "Incorrect API key provided", 404: "The model `judge` does not exist."}[status]
    return Scripted([(status, {}, json.dumps({"error": {"message": msg, "type": "invalid_request_error"}}).encode())])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("pairs") / "d", 6, seed=9, levels=(1,), modality="image", prefix="p")


def test_eval_progress_per_batch_and_no_hf_bars(cli, tiny, pairs, tmp_path, monkeypatch):
    """In process: the bar advances once per engine batch (4 + 4 + 4 of 12 requests), not once per chunk
    of four batches. Through the CLI with progress on: no transformers tqdm line on stderr."""
    import r1rm.runtime.progress as progress
    from r1rm.commands import eval as eval_cmd
    from r1rm.config import load_config

    advances: list[int] = []
    real = progress.make_progress

    def recording(**kw):
        bar = real(**{**kw, "enabled": False})
        bar.advance = lambda task, k: advances.append(k)
        return bar

    monkeypatch.setattr(progress, "make_progress", recording)
    cfg = load_config(None, [f"model.path={tiny}", f"eval.path={pairs}", f"output_dir={tmp_path / 'a'}",
                             "runtime.device=cpu", "generation.max_new_tokens=4", "engine.batch_size=4",
                             "runtime.report_to=none"])
    try:
        eval_cmd.run(cfg)
    finally:
        from accelerate.state import PartialState

        PartialState._reset_state()  # the run's CPU process state must not outlive this test
    assert advances == [4, 4, 4]

    proc = cli("eval", f"model.path={tiny}", f"eval.path={pairs}", f"output_dir={tmp_path / 'b'}", "runtime.device=cpu",
               "generation.max_new_tokens=4", "engine.batch_size=4", "runtime.progress=true", "runtime.report_to=none")
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr
    assert "12/12" in proc.stdout  # r1rm's own bar is there


def test_judge_names_no_best_when_every_verdict_is_undecided(cli, tmp_path):
    from scripted import ScriptedEndpoint

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "c1", "question": "Which?", "candidates": ["A.", "B.", "C."]}) + "\n")
    out = tmp_path / "o"
    with ScriptedEndpoint(["<think>I cannot tell them apart.</think>"]) as ep:
        proc = cli("judge", "engine.kind=openai", f"engine.base_url={ep.url}", "engine.model_name=judge",
                   f"judge.input={inp}", f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert row["undecided_verdicts"] == 6 and row["wins"] == [[0, 0, 0]] * 3
    assert (row["best"], row["best_reason"]) == (None, "undecided")


@pytest.mark.parametrize("status", [401, 404])
def test_refused_key_or_unknown_model_stops_at_once(cli, pairs, tmp_path, status):
    out = tmp_path / "o"
    os.environ.pop("R1RM_POLISH_KEY", None)
    with _refusing(status) as ep:
        proc = cli("eval", "engine.kind=openai", f"engine.base_url={ep.url}", "engine.model_name=judge",
                   "engine.api_key_env=R1RM_POLISH_KEY", "engine.concurrency=2", "engine.max_retries=3",
                   f"eval.path={pairs}", f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "rerun the same command" not in proc.stderr
    assert ep.url in proc.stderr and f"HTTP {status}" in proc.stderr
    if status == 401:
        assert "R1RM_POLISH_KEY" in proc.stderr and "not set" in proc.stderr
    else:
        assert "engine.model_name" in proc.stderr and "engine.base_url" in proc.stderr
    # no retries, and the queued requests were not sent (12 requests, 2 in flight at a time)
    assert ep.calls <= 2


def test_failed_start_leaves_no_output_folder(tiny, pairs, tmp_path):
    """A missing model or data file: exit 2, and output_dir was never made."""
    missing_model, missing_file = tmp_path / "no-model", tmp_path / "no-data.jsonl"
    judge_in = tmp_path / "judge.jsonl"
    judge_in.write_text(json.dumps({"question": "q", "response1": "a", "response2": "b"}) + "\n")
    common = ["runtime.device=cpu", "runtime.progress=false", "runtime.report_to=none"]
    runs = {
        "eval-model": ("eval", f"model.path={missing_model}", f"eval.path={pairs}"),
        "eval-data": ("eval", f"model.path={tiny}", f"eval.path={missing_file}"),
        "sft": ("sft", f"model.path={missing_model}", f"data.train=[{pairs}]"),
        "rl": ("rl", f"model.path={missing_model}", f"data.train=[{pairs}]", "rl.rollout_batch_size=2",
               "rl.n_samples_per_prompt=2", "rl.train_batch_size=4", "rl.micro_batch_size=2"),
        "build-data": ("build-data", f"build.sources=[{{name: a, format: jsonl, path: '{missing_file}'}}]"),
        "judge": ("judge", f"model.path={missing_model}", f"judge.input={judge_in}"),
        "vote": ("vote", f"vote.generations={missing_file}"),
    }
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "r1rm.cli", cmd, *args, f"output_dir={tmp_path / name}", *common],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, (cmd, *args) in runs.items()}  # side by side: each start is mostly imports
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err, (name, err)
        assert not (tmp_path / name).exists(), (name, sorted(p.name for p in (tmp_path / name).iterdir()))
