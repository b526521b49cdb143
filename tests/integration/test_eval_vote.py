"""`r1rm eval` and `r1rm vote` end to end on CPU with the tiny model."""

import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), 6, seed=5, levels=(1, 4), modality="image", prefix="heldout")


def common(tiny, out):
    return [f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
            "generation.max_new_tokens=6", "engine.batch_size=4"]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_both_orders_and_from_generations(cli, tiny, data, tmp_path):
    out = tmp_path / "e"
    proc = cli("eval", *common(tiny, out), f"eval.path={data}")
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out / "generations.jsonl")
    assert len(rows) == 12 and len({tuple(r["key"]) for r in rows}) == 12
    assert {r["order"] for r in rows} == {"chosen_first", "chosen_second"}
    for r in rows:
        assert r["correct"] == (r["choice"] == (1 if r["order"] == "chosen_first" else 2))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 6 and metrics["complete"] is True
    assert set(metrics["accuracy"]) == {"chosen_first", "chosen_second", "both_orders_mean", "both_orders_strict"}
    assert (out / "report.md").read_text().strip()
    # recomputing from the generations file needs no model and gives the same numbers
    again = tmp_path / "again"
    proc = cli("eval", f"output_dir={again}", "--from-generations", out / "generations.jsonl", "model.path=/nonexistent")
    assert proc.returncode == 0, proc.stderr
    recomputed = json.loads((again / "metrics.json").read_text())
    for key in ("accuracy", "parse_fail_rate", "first_choice_rate", "position_consistency", "n_items"):
        assert recomputed[key] == metrics[key]


def test_eval_resumes_without_duplicates(cli, tiny, data, tmp_path):
    full = tmp_path / "full"
    assert cli("eval", *common(tiny, full), f"eval.path={data}").returncode == 0
    part = tmp_path / "part"
    part.mkdir()
    lines = (full / "generations.jsonl").read_text().splitlines(keepends=True)
    # a run killed after 5 records, the 6th cut in the middle of its line
    (part / "generations.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    proc = cli("eval", *common(tiny, part), f"eval.path={data}")
    assert proc.returncode == 0, proc.stderr
    resumed = rows_of(part / "generations.jsonl")
    assert len(resumed) == 12 and len({tuple(r["key"]) for r in resumed}) == 12
    by_key = {tuple(r["key"]): r["text"] for r in rows_of(full / "generations.jsonl")}
    assert all(by_key[tuple(r["key"])] == r["text"] for r in resumed)  # greedy: same texts
    m_full = json.loads((full / "metrics.json").read_text())
    m_part = json.loads((part / "metrics.json").read_text())
    assert m_full["accuracy"] == m_part["accuracy"]


def test_eval_refuses_to_resume_another_models_generations(cli, tiny, data, tmp_path):
    """Generations already in output_dir count only for the eval that wrote them: another model,
    the same path with rewritten weights (a new best/), or other sampling stops with exit 2
    before anything is written; the same eval again resumes (nothing to generate)."""
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    out = tmp_path / "e"
    assert cli("eval", *common(model, out), f"eval.path={data}").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert json.loads(before["run.json"])["model.path"] == str(model)

    def refused(*extra: str) -> str:
        proc = cli("eval", *common(model, out), f"eval.path={data}", *extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        msg = " ".join(proc.stderr.split())
        assert "holds generations of another eval" in msg and "run.json" in msg
        return msg

    assert f"model.path: '{model}' -> '{tiny}'" in refused(f"model.path={tiny}")
    assert "generation.max_new_tokens: 6 -> 8" in refused("generation.max_new_tokens=8")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten in place: same path, new file
    assert "model.stamp" in refused()
    fresh = tmp_path / "e2"
    assert cli("eval", *common(model, fresh), f"eval.path={data}").returncode == 0
    again = cli("eval", *common(model, fresh), f"eval.path={data}", "engine.batch_size=2")  # a free setting
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(rows_of(fresh / "generations.jsonl")) == 12


def test_eval_k_samples_then_vote(cli, tiny, data, tmp_path):
    out = tmp_path / "k"
    proc = cli("eval", *common(tiny, out), f"eval.path={data}", "eval.k=3", "eval.orders=[chosen_first]")
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out / "generations.jsonl")
    assert len(rows) == 18 and {r["sample"] for r in rows} == {0, 1, 2}
    assert json.loads((out / "metrics.json").read_text())["sampling"]["temperature"] == 1.0
    proc = cli("vote", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    votes = json.loads((out / "votes.json").read_text())
    assert [p["k"] for p in votes["curve"]] == [1, 2, 3]
    assert (out / "votes.png").stat().st_size > 1000
    assert_err = cli("vote", f"output_dir={out}", "vote.k_max=9")
    assert assert_err.returncode == 2 and "vote.k_max" in assert_err.stderr
    # the same rows with known answers (the right one is 1: chosen first), per item its 3 samples
    script = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (None, 1, 2), (2, 2, 2), (None, None, None)]
    uids = list(dict.fromkeys(r["uid"] for r in rows))
    known = []
    for r in rows:
        choice = script[uids.index(r["uid"])][r["sample"]]
        known.append({**r, "choice": choice, "correct": choice == 1, "p_choice": None})
    (tmp_path / "known.jsonl").write_text("".join(json.dumps(r) + "\n" for r in known))
    proc = cli("vote", f"output_dir={tmp_path / 'v'}", f"vote.generations={tmp_path / 'known.jsonl'}")
    assert proc.returncode == 0, proc.stderr
    curve = json.loads((tmp_path / "v" / "votes.json").read_text())["curve"]
    # Any@k: items 1 | 1, 2, 4 | 1–4 have a right sample among their first k
    assert [p["any"] for p in curve] == pytest.approx([1 / 6, 3 / 6, 4 / 6])
    # Voting@k: k = 2 items 1 and 4 (its one vote; item 2's 1–1 tie is wrong), k = 3 items 1 and 2
    assert [p["majority"] for p in curve] == pytest.approx([1 / 6, 2 / 6, 2 / 6])
    # without p_choice a sample weighs 1: weighted voting counts as majority does
    assert [p["weighted"] for p in curve] == pytest.approx([1 / 6, 2 / 6, 2 / 6])


def _fixture_subset(shared_dir: Path, name: str, n: int, dst: Path) -> Path:
    lines = (shared_dir / "fixtures" / name).read_text().splitlines()[:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + "\n")
    return dst


def test_eval_vl_rewardbench_format_with_made_images(cli, tiny, tmp_path, shared_dir):
    from PIL import Image

    bench = _fixture_subset(shared_dir, "vl_rewardbench.jsonl", 4, tmp_path / "vl" / "bench.jsonl")
    root = tmp_path / "imgs"
    for row in map(json.loads, bench.read_text().splitlines()):
        p = root / row["image"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), "green").save(p)
    out = tmp_path / "o"
    proc = cli("eval", *common(tiny, out), "eval.benchmark=vl-rewardbench", f"eval.path={bench}", f"eval.image_root={root}")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "vl-rewardbench" and metrics["n_items"] == 4
    assert set(metrics["accuracy"]["chosen_first"]["per_category"]) <= {"general", "hallucination", "reasoning"}


def test_eval_missing_image_is_exit_2_or_skipped(cli, tiny, tmp_path, shared_dir):
    # three items with three different images
    picked, seen = [], set()
    for line in (shared_dir / "fixtures" / "mm_rlhf_rewardbench.jsonl").read_text().splitlines():
        img = json.loads(line).get("image")
        if img and img not in seen:
            seen.add(img)
            picked.append(line)
        if len(picked) == 3:
            break
    bench = tmp_path / "mm" / "bench.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text("\n".join(picked) + "\n")
    out = tmp_path / "o"
    proc = cli("eval", *common(tiny, out), "eval.benchmark=mm-rlhf-rewardbench", f"eval.path={bench}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bench.jsonl:1" in proc.stderr
    # make the second item's image, skip the rest
    from PIL import Image

    row = json.loads(bench.read_text().splitlines()[1])
    p = bench.parent / row["image"]
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), "red").save(p)
    proc = cli("eval", *common(tiny, out), "eval.benchmark=mm-rlhf-rewardbench", f"eval.path={bench}", "eval.skip_missing_media=true")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] == 1 and metrics["n_skipped"] == 2
    assert (out / "skipped.jsonl").exists()


def test_eval_config_errors(cli, tmp_path):
    proc = cli("eval", f"output_dir={tmp_path}", "eval.benchmark=vl-rewardbenchh")
    assert proc.returncode == 2 and "eval.benchmark" in proc.stderr
    proc = cli("eval", f"output_dir={tmp_path}")
    assert proc.returncode == 2 and "eval.path" in proc.stderr
    proc = cli("eval", f"output_dir={tmp_path}", "--from-generations", tmp_path / "none.jsonl")
    assert proc.returncode == 2 and "not found" in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_eval_split_across_two_processes_matches_one(tiny, data, tmp_path):
    import os
    import subprocess
    import sys

    one = tmp_path / "one"
    two = tmp_path / "two"
    base = ["-m", "r1rm.cli", "eval", *common(tiny, one), f"eval.path={data}"]
    env = {**os.environ, "COLUMNS": "200"}
    assert subprocess.run([sys.executable, *base], env=env, capture_output=True, timeout=300).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "r1rm.cli", "eval", *common(tiny, two), f"eval.path={data}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "generations.rank0.jsonl").exists() and (two / "generations.rank1.jsonl").exists()
    merged = rows_of(two / "generations.jsonl")
    assert len(merged) == 12 and len({tuple(r["key"]) for r in merged}) == 12
    single = {tuple(r["key"]): r["text"] for r in rows_of(one / "generations.jsonl")}
    assert {tuple(r["key"]): r["text"] for r in merged} == single
    assert json.loads((two / "metrics.json").read_text())["accuracy"] == json.loads((one / "metrics.json").read_text())["accuracy"]


def test_eval_killed_with_sigkill_resumes_without_loss_or_duplicates(cli, tiny, tmp_path):
    """Real SIGKILLs (not a simulated exit), four in a row, each at a named phase (_R1RM_TEST_KILL_AT:
    engine loaded, after the 5th record, after 30 more, after metrics.json — the same moments on any
    machine), with a line cut mid-write between two of them: no metrics.json before the run is
    complete, the cut line is dropped and written again, and the rerun completes the file — every
    (item, order, sample) key exactly once, the uninterrupted run's records and metrics."""
    from killing import kill_at_phase

    from r1rm.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "d", 24, seed=9, levels=(1,), modality="image", prefix="heldout")
    extra = [f"eval.path={data}", "engine.batch_size=1", "generation.max_new_tokens=24"]
    full = tmp_path / "full"
    proc = cli("eval", *common(tiny, full), *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = rows_of(full / "generations.jsonl")
    assert len(want) == 48 and len({tuple(r["key"]) for r in want}) == 48
    killed = tmp_path / "killed"
    gens = killed / "generations.jsonl"

    def complete_rows() -> list[dict]:  # newline-ended lines only: a line cut by the kill is not a record
        return [json.loads(x) for x in (gens.read_bytes() if gens.exists() else b"").split(b"\n")[:-1]]

    kills = []
    for phase, n in (("load:1", 0), ("record:5", 5), ("record:30", 35), ("end:1", 48)):
        kills.append(kill_at_phase(["eval", *common(tiny, killed), *extra], label="eval", phase=phase, timeout_s=300,
                                   left=lambda: f"{len(complete_rows())} records, metrics {(killed / 'metrics.json').exists()}"))
        why = "\n".join(map(str, kills))
        assert kills[-1].killed, f"{why}\n{kills[-1].stderr_tail}"
        got = complete_rows()
        assert len(got) == n and got == want[:n], why  # a prefix of the uninterrupted run's records: none twice
        # nothing presented as complete before it is
        assert (killed / "metrics.json").exists() == (n == 48), why
        if phase == "record:5":  # a kill inside a write: half of the next record, no newline
            with open(gens, "ab") as f:
                f.write(json.dumps(want[5]).encode()[:40])
            assert "repaired" not in kills[-1].stderr_tail
    assert "repaired" in kills[2].stderr_tail and "generations.jsonl:6" in kills[2].stderr_tail, kills[2].stderr_tail
    assert json.loads((killed / "metrics.json").read_text())["complete"]
    again = cli("eval", *common(tiny, killed), *extra)
    why = "\n".join(map(str, kills))
    assert again.returncode == 0, f"{why}\n{again.stderr[-2000:]}"
    rows = rows_of(gens)
    keys = [tuple(r["key"]) for r in rows]
    assert len(keys) == 48 and len(set(keys)) == 48, why
    assert rows == want, why  # greedy, one request per batch: the same records in the same order
    assert json.loads((full / "metrics.json").read_text()) == json.loads((killed / "metrics.json").read_text()), why
