"""`r1rm sft` on CPU with the tiny model: labels, skipping, loss, checkpoints, resume, options, ZeRO."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), 64, seed=3, levels=(1,), modality="image", prefix="train")


def args(tiny, data, out, *extra):
    return ["sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={tiny}", f"data.train=[{data}]",
            f"output_dir={out}", "runtime.progress=false", "runtime.log_every_steps=1", "runtime.report_to=none", *extra]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_labels_supervise_only_the_assistant_span(tiny, data):
    from r1rm.data.chat import record_messages
    from r1rm.data.records import read_records
    from r1rm.models.loading import load_processor
    from r1rm.runtime.batches import IGNORE, TooLong, collate, encode_sft

    processor = load_processor(str(tiny))
    rec = next(read_records(data))
    msgs = record_messages(rec, image_root=data.parent)
    enc = encode_sft(processor, msgs, rec.meta["trace"], max_len=1024)
    ids, labels = enc.inputs["input_ids"][0], enc.labels[0]
    span = labels != IGNORE
    assert processor.decode(ids[span]) == rec.meta["trace"] + "<|im_end|>"
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_pad).sum() == 16 and not span[ids == image_pad].any()
    assert not span[: enc.n_prompt].any()
    with pytest.raises(TooLong):
        encode_sft(processor, msgs, rec.meta["trace"], max_len=50)
    batch = collate([enc, encode_sft(processor, record_messages(rec.swapped(), image_root=data.parent), "short", max_len=1024)],
                    pad_id=processor.tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape and batch["pixel_values"].shape[0] == 2 * 64
    assert batch["image_grid_thw"].shape == (2, 3)


def test_sft_lowers_loss_saves_loadable_checkpoints(cli, tiny, data, tmp_path):
    out = tmp_path / "s"
    proc = cli(*args(tiny, data, out, "sft.max_steps=24", "sft.save_every_steps=8", "sft.keep_last=2",
                     "sft.batch_size=4", "sft.micro_batch_size=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ls = losses(out)
    assert sorted(ls) == list(range(1, 25))
    assert all(map(lambda v: v == v and abs(v) < 1e9, ls.values()))
    assert sum(ls[s] for s in range(21, 25)) / 4 < 0.7 * sum(ls[s] for s in range(1, 5)) / 4
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000016", "step-0000024"]  # keep_last=2, final included
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(out / "model")
    base = AutoModelForImageTextToText.from_pretrained(tiny)
    name, p = next((n, p) for n, p in m.named_parameters() if "embed_tokens" in n)
    assert not torch.equal(p, dict(base.named_parameters())[name])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["skipped_too_long"] == 0
    assert json.loads((out / "checkpoints" / "step-0000016" / "trainer_state.json").read_text())["step"] == 16
    # the same command again: a finished run, nothing retrained or rewritten (an eval of the model resumes)
    from r1rm.runtime.checkpoint import model_stamp

    stamp, ckpt_mtime = model_stamp(str(out / "model")), (out / "checkpoints" / "step-0000024").stat().st_mtime_ns
    proc = cli(*args(tiny, data, out, "sft.max_steps=24", "sft.save_every_steps=8", "sft.keep_last=2",
                     "sft.batch_size=4", "sft.micro_batch_size=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model_stamp(str(out / "model")) == stamp and losses(out) == ls
    assert (out / "checkpoints" / "step-0000024").stat().st_mtime_ns == ckpt_mtime
    assert json.loads((out / "summary.json").read_text()) == summary


def test_too_long_samples_are_skipped_and_counted_or_stop(cli, tiny, data, tmp_path):
    out = tmp_path / "skip"
    proc = cli(*args(tiny, data, out, "sft.max_steps=2", "sft.max_seq_len=100"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["skipped_too_long"] == 16
    proc = cli(*args(tiny, data, tmp_path / "err", "sft.max_steps=2", "sft.max_seq_len=100", "sft.on_truncation=error"))
    assert proc.returncode == 2 and "sft.max_seq_len=100" in proc.stderr and "train.jsonl:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_batch_and_data_are_user_errors(cli, tiny, data, tmp_path):
    proc = cli(*args(tiny, data, tmp_path / "a", "sft.batch_size=6", "sft.micro_batch_size=4"))
    assert proc.returncode == 2 and "not divisible" in proc.stderr
    bad = tmp_path / "nt.jsonl"
    bad.write_text(json.dumps({"question": "q", "response1": "a", "response2": "b", "label": 1}) + "\n")
    proc = cli(*args(tiny, bad, tmp_path / "b"))
    assert proc.returncode == 2 and f"{bad}:1" in proc.stderr and "no SFT target" in proc.stderr


def test_kill_and_resume_reproduces_the_loss_curve(cli, tiny, data, tmp_path):
    """SIGKILL the same run four times in a row, each at a named phase (_R1RM_TEST_KILL_AT: while
    loading, mid-step, mid-checkpoint, after the end — the same moments on a fast or a slow
    machine), then start it again: every step logged once with the uninterrupted run's loss, the
    same summary and weights, never a half-written checkpoint under a step- name, and what a kill
    left half-written removed on the next start."""
    from killing import assert_checkpoints_complete, assert_same_weights, complete_rows, kill_at_phase, training_state

    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ["sft.max_steps=8", "sft.save_every_steps=3", "sft.batch_size=4", "sft.micro_batch_size=2"]
    proc = cli(*args(tiny, data, full, *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = losses(full)
    ref_ckpt = full / "checkpoints" / "step-0000008"
    ckpts = killed / "checkpoints"
    # (phase, what it left: steps logged, checkpoint folders; the tiny recipe keeps 3)
    plan = [("load:1", 0, []),  # model loaded, nothing trained yet
            ("step:5", 4, ["step-0000003"]),  # inside step 5 (backward done, no optimizer step)
            ("checkpoint:1", 6, [".tmp-step-0000006", "step-0000003"]),  # resumed at 3, killed writing step 6
            ("end:1", 8, ["step-0000003", "step-0000006", "step-0000008"])]  # summary.json written
    kills = []
    for phase, n_rows, left in plan:
        kills.append(kill_at_phase(args(tiny, data, killed, *common), label="sft", phase=phase,
                                   left=lambda: training_state(killed)))
        why = "\n".join(map(str, kills))
        assert kills[-1].killed, f"{why}\n{kills[-1].stderr_tail}"
        rows = complete_rows(killed)  # the logged steps are 1..m, once each, with the uninterrupted losses
        assert [r["step"] for r in rows] == list(range(1, n_rows + 1)), why
        assert all(r["loss"] == pytest.approx(a[r["step"]], abs=1e-5) for r in rows), why
        assert (sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []) == left, why
        assert_checkpoints_complete(killed, ref_ckpt, why, mid_run=True)  # step- names: complete ones only
    assert (killed / "summary.json").is_file() and (killed / "model").is_dir()
    # killed after the end: the rerun returns the summary and still removes what a kill left half-written
    for junk in (ckpts / ".tmp-step-0000009", ckpts / ".del-step-0000003"):
        junk.mkdir()
        (junk / "model.safetensors").write_bytes(b"cut")
    proc = cli(*args(tiny, data, killed, *common))
    why = "\n".join(map(str, kills))
    assert proc.returncode == 0, f"{why}\n{proc.stderr[-3000:]}"
    assert ".tmp-step-0000009" in proc.stderr and ".del-step-0000003" in proc.stderr, proc.stderr[-2000:]
    rows = complete_rows(killed)
    assert [r["step"] for r in rows] == list(range(1, 9)), why  # no step lost or logged twice
    for r in rows:
        assert r["loss"] == pytest.approx(a[r["step"]], abs=1e-5), (r["step"], why)
    s_full, s_killed = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    for key in ("steps", "samples", "tokens_seen", "skipped_too_long", "skipped_updates", "nonfinite_microbatches"):
        assert s_killed[key] == s_full[key], (key, why)
    assert s_killed["final_loss"] == pytest.approx(s_full["final_loss"], abs=1e-5), why
    assert {p.name for p in (killed / "model").iterdir()} == {p.name for p in (full / "model").iterdir()}, why
    assert_same_weights(full / "model", killed / "model", why)
    assert_checkpoints_complete(killed, ref_ckpt, why)
    names = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == names, why
    for n in names:
        assert_same_weights(full / "checkpoints" / n, killed / "checkpoints" / n, why)


def test_rerun_of_a_finished_run_removes_half_written_checkpoints(cli, tiny, data, tmp_path):
    """A kill inside a checkpoint's write leaves `.tmp-step-*`; a rerun with nothing left to train
    (it saves nothing) must still remove it, and keep the finished run's summary."""
    out = tmp_path / "done"
    common = ["sft.max_steps=2", "sft.save_every_steps=2", "sft.batch_size=4", "sft.micro_batch_size=2"]
    assert cli(*args(tiny, data, out, *common)).returncode == 0
    summary = (out / "summary.json").read_text()
    junk = out / "checkpoints" / ".tmp-step-0000002"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"cut")
    proc = cli(*args(tiny, data, out, *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    assert (out / "summary.json").read_text() == summary


def test_freeze_vision_and_lora(cli, tiny, data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    proc = cli(*args(tiny, data, out, "sft.max_steps=3", "model.freeze_vision_tower=true", "model.freeze_projector=true"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = load_file(tiny / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    vis = [k for k in before if k.startswith("visual.")]
    assert vis and all(torch.equal(before[k], after[k]) for k in vis)
    assert any(not torch.equal(before[k], after[k]) for k in before if "embed_tokens" in k)
    lora = tmp_path / "lora"
    proc = cli(*args(tiny, data, lora, "sft.max_steps=3", "model.lora.r=4", "model.lora.alpha=8"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = load_file(lora / "model" / "model.safetensors")
    assert set(merged) == set(before)  # plain HF names: loads without peft
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    assert changed and all("proj" in k and not k.startswith("visual.") for k in changed)
    assert (lora / "model" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_process_deepspeed_sft(tiny, data, tmp_path, stage):
    out = tmp_path / stage
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1rm.cli",
           *args(tiny, data, out, "sft.max_steps=6", "sft.save_every_steps=3", f"runtime.deepspeed=recipes/deepspeed/{stage}.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ls = losses(out)
    assert sorted(ls) == list(range(1, 7)) and all(v == v for v in ls.values())
    assert ls[6] < ls[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["grad_accum"] == 1
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(out / "model")
    assert sum(p.numel() for p in m.parameters()) > 400_000  # full weights gathered, not ZeRO shards


def test_resume_refuses_another_runs_checkpoints(cli, tiny, data, tmp_path):
    """A reused output_dir whose checkpoints another run wrote (other data, other lr, or other
    bytes under the same data path) is refused with exit 2 before anything is written — resuming
    would silently continue the wrong run — while the same run, only longer, resumes."""
    out = tmp_path / "r"
    mine = Path(data).parent / f"mine-{tmp_path.name}.jsonl"  # beside the fixture's images
    mine.write_bytes(Path(data).read_bytes())
    base = ("sft.batch_size=4", "sft.micro_batch_size=2", "sft.save_every_steps=100")
    try:
        assert cli(*args(tiny, mine, out, "sft.max_steps=2", *base)).returncode == 0
        before = {p: p.read_bytes() for p in [out / "config.yaml", out / "metrics.jsonl", out / "summary.json"]}

        def refused(*extra: str) -> str:
            proc = cli(*args(tiny, *extra))
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
            assert {p: p.read_bytes() for p in before} == before  # nothing overwritten
            msg = " ".join(proc.stderr.split())
            assert "which this run would resume" in msg and "new output_dir" in msg
            return msg

        msg = refused(data, out, "sft.max_steps=2", "sft.lr=1e-4", *base)
        assert "holds checkpoints of a run with other settings" in msg and "sft.lr: 0.003 -> 0.0001" in msg
        assert "data.train:" in msg and "step-0000002/trainer_state.json" in msg
        # the same path with other contents (data regenerated in place)
        mine.write_bytes(b"".join(Path(data).read_bytes().splitlines(keepends=True)[:-1]))
        assert "data.train.sha256" in refused(mine, out, "sft.max_steps=2", *base)
        mine.write_bytes(Path(data).read_bytes())
        # a checkpoint from before the settings were recorded: compared with the run's config.yaml
        st = out / "checkpoints" / "step-0000002" / "trainer_state.json"
        recorded = st.read_text()
        st.write_text(json.dumps({k: v for k, v in json.loads(recorded).items() if k != "run"}))
        msg = refused(mine, out, "sft.max_steps=2", "sft.lr=1e-4", *base)
        assert "sft.lr: 0.003 -> 0.0001" in msg and "config.yaml" in msg
        # ... and its data rewritten after it (same path, same settings)
        time.sleep(0.05)
        mine.write_bytes(Path(data).read_bytes())
        assert "written before the training data was rewritten" in refused(mine, out, "sft.max_steps=2", *base)
        st.write_text(recorded)
        # the same run, longer: resumes at step 2 and logs steps 3-4 only
        proc = cli(*args(tiny, mine, out, "sft.max_steps=4", *base))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sorted(losses(out)) == [1, 2, 3, 4]
        state = json.loads((out / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
        assert state["run"]["sft.lr"] == 3e-3 and "sft.max_steps" not in state["run"]
        assert len(state["run"]["data.train.sha256"]) == 64
    finally:
        mine.unlink(missing_ok=True)


def test_keep_best_keeps_the_best_validation_checkpoint_across_a_resume(cli, tiny, data, tmp_path):
    """sft.keep_best: the periodic greedy eval on data.eval every sft.eval_every_steps (and at the last
    step) is logged; out/best holds the weights of the first step with the highest score, equal to
    that step's checkpoint, named in best.json and summary.json; a run stopped at step 4 and resumed
    to step 6 keeps the best record its checkpoint carried (the same evals, the same best)."""
    from safetensors.torch import load_file

    val = data  # a validation split in a real run; the point here is the bookkeeping
    common = [f"data.eval=[{val}]", "sft.eval_every_steps=2", "sft.eval_limit=4", "sft.keep_best=true",
              "sft.best_metric=both_orders_mean", "sft.batch_size=4", "sft.micro_batch_size=2", "sft.lr=3e-3",
              "sft.save_every_steps=2", "sft.keep_last=5", "generation.max_new_tokens=40"]
    full, split = tmp_path / "full", tmp_path / "split"
    proc = cli(*args(tiny, data, full, "sft.max_steps=6", *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [(r["step"], r["eval/both_orders_mean"]) for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())
             if "eval/both_orders_mean" in r]
    assert [s for s, _ in evals] == [2, 4, 6] and all(0 <= v <= 1 for _, v in evals)
    top = max(v for _, v in evals)
    want = next(s for s, v in evals if v == top)  # ties keep the earlier step
    record = json.loads((full / "best" / "best.json").read_text())
    assert record == {"step": want, "metric": "both_orders_mean", "value": top}
    summary = json.loads((full / "summary.json").read_text())
    assert summary["best"] == record and summary["eval/step"] == 6
    best = load_file(full / "best" / "model.safetensors")
    ref = load_file((full / "model" if want == 6 else full / "checkpoints" / f"step-{want:07d}") / "model.safetensors")
    assert best.keys() == ref.keys() and all(best[k].equal(ref[k]) for k in best)
    # stopped at step 4, resumed to 6 (sft.max_steps may change on a resume): the same evals and best
    for steps in (4, 6):
        proc = cli(*args(tiny, data, split, f"sft.max_steps={steps}", "sft.lr_schedule=constant", *common))
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli(*args(tiny, data, tmp_path / "const", "sft.max_steps=6", "sft.lr_schedule=constant", *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "const", split))
    assert a["best"] == b["best"] == json.loads((split / "best" / "best.json").read_text())
    # without the periodic eval there is nothing to choose by: refused before anything is written
    proc = cli(*args(tiny, data, tmp_path / "nobest", "sft.keep_best=true"))
    assert proc.returncode == 2 and "sft.keep_best needs the periodic eval" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "nobest").exists()
