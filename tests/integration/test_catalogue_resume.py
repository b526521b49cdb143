"""Bad-input catalogue, class "Resume identity" (issue 26 §5), through the real CLI.

A folder being resumed must belong to the same run: eval and judge record what their outputs were
drawn from in `run.json` (the settings, the model's weights, the input's bytes, and a content stamp
of every image the items refer to) and refuse another run's folder, naming what changed. A last line
a kill cut (mid-JSON, with or without its newline) is repaired — dropped, said, counted, written again;
a damaged line before the last is refused with file:line. Every start removes what a killed run left
half-written in checkpoints/. One eval and one judge run are made once and copied for each case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_bad_input_catalogue import assert_clean_error, cli


def common(model: Path, out: Path) -> list[str]:
    return [f"model.path={model}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
            "runtime.report_to=none", "generation.max_new_tokens=6", "engine.batch_size=4"]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A 3-item image benchmark, and one finished eval and one finished judge run of it."""
    from r1rm.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("resume")
    data = write_dataset(root / "d", 3, seed=9, levels=(1,), modality="image", prefix="heldout")
    ev, jd = root / "eval", root / "judge"
    proc = cli("eval", *common(tiny, ev), f"eval.path={data}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("judge", *common(tiny, jd), f"judge.input={data}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"data": data, "eval": ev, "judge": jd}


def copy_of(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


def images_copy(made, tmp: Path, *, change: bool) -> Path:
    """Another image root with the benchmark's images (`change`: the first one redrawn, same name)."""
    root = tmp / "other-root"
    shutil.copytree(made["data"].parent / "images", root / "images")
    if change:
        first = sorted((root / "images").iterdir())[0]
        Image.new("RGB", (64, 64), "blue").save(first)
    return root


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------- eval: media in the identity
def test_eval_resume_into_other_images_is_refused(made, tiny, tmp_path):
    """The issue's case: another eval.image_root whose picture under the same name differs."""
    out = copy_of(made["eval"], tmp_path)
    before = (out / "generations.jsonl").read_bytes()
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}",
               f"eval.image_root={images_copy(made, tmp_path, change=True)}")
    assert_clean_error(proc, "run.json", "1 image(s) changed since its generations were written", "images/",
                       "media root then", "use a new output_dir")
    assert (out / "generations.jsonl").read_bytes() == before  # nothing mixed in


def test_eval_resume_with_an_image_gone_skips_only_its_item(made, tiny, tmp_path):
    """An image missing under the new root is no mix-up: its item is skipped and counted
    (eval.skip_missing_media), the others resume."""
    out = copy_of(made["eval"], tmp_path)
    before = (out / "generations.jsonl").read_bytes()
    root = images_copy(made, tmp_path, change=False)
    sorted((root / "images").iterdir())[0].unlink()
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}", f"eval.image_root={root}",
               "eval.skip_missing_media=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "generations.jsonl").read_bytes() == before
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_skipped"] == 1 and metrics["n_generations"] == 4


def test_eval_resume_with_the_same_images_elsewhere_resumes(made, tiny, tmp_path):
    out = copy_of(made["eval"], tmp_path)
    before = (out / "generations.jsonl").read_bytes()
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}",
               f"eval.image_root={images_copy(made, tmp_path, change=False)}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "generations.jsonl").read_bytes() == before  # nothing generated again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_generations"] == 6 and metrics["n_repaired_lines"] == 0


def test_eval_resume_with_other_sampling_is_refused(made, tiny, tmp_path):
    out = copy_of(made["eval"], tmp_path)
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}", "generation.max_new_tokens=8")
    assert_clean_error(proc, "run.json", "generation.max_new_tokens: 6 -> 8")


def test_eval_damaged_run_record_is_refused(made, tiny, tmp_path):
    out = copy_of(made["eval"], tmp_path)
    (out / "run.json").write_text("{not json")
    assert_clean_error(cli("eval", *common(tiny, out), f"eval.path={made['data']}"), "run.json", "not a run record")


# ---------------------------------------------------------------- eval: damaged generations
@pytest.mark.parametrize("case", ["cut_last_line_with_newline", "cut_last_line_without_newline"])
def test_eval_cut_last_line_is_repaired(made, tiny, tmp_path, case):
    out = copy_of(made["eval"], tmp_path)
    gens = out / "generations.jsonl"
    want = lines(gens)
    cut = want[-1][:45] + (b"\n" if case == "cut_last_line_with_newline" else b"")
    gens.write_bytes(b"".join(want[:-1]) + cut)
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"repaired {gens}:6" in proc.stderr
    assert lines(gens) == want  # dropped and generated again (greedy: the same record), none twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_generations"] == 6 and metrics["n_repaired_lines"] == 1


def test_eval_garbage_line_before_the_last_is_refused(made, tiny, tmp_path):
    bad = b"garbage{\n"
    out = copy_of(made["eval"], tmp_path)
    gens = out / "generations.jsonl"
    old = lines(gens)
    gens.write_bytes(b"".join(old[:2]) + bad + b"".join(old[2:]))
    before = gens.read_bytes()
    proc = cli("eval", *common(tiny, out), f"eval.path={made['data']}")
    assert_clean_error(proc, f"{gens}:3", "cannot resume", "delete that line")
    assert "JSONDecodeError" not in proc.stderr and gens.read_bytes() == before


# ---------------------------------------------------------------- judge: eval's identity check
@pytest.mark.parametrize("case", ["other_model_prompt_and_max_new_tokens", "input_changed", "image_changed"])
def test_judge_resume_of_another_run_is_refused(made, tiny, tmp_path, case):
    out = copy_of(made["judge"], tmp_path)
    before = (out / "verdicts.jsonl").read_bytes()
    args, inp = common(tiny, out), made["data"]
    if case == "other_model_prompt_and_max_new_tokens":  # the case: 23 old verdicts merged with 27 new
        other = tmp_path / "other-model"
        shutil.copytree(tiny, other)
        args = [*common(other, out), "data.prompt=msrl", "generation.max_new_tokens=8"]
        needles = ["model.path:", "data.prompt: 'r1reward' -> 'msrl'", "generation.max_new_tokens: 6 -> 8"]
    elif case == "input_changed":
        inp = tmp_path / "in.jsonl"
        inp.write_bytes(made["data"].read_bytes() + lines(made["data"])[0].replace(b'"uid":"', b'"uid":"new-'))
        shutil.copytree(made["data"].parent / "images", tmp_path / "images")
        needles = ["judge.input.sha256"]
    else:
        args = [*args, f"data.image_root={images_copy(made, tmp_path, change=True)}"]
        needles = ["1 image(s) changed since its verdicts were written"]
    proc = cli("judge", *args, f"judge.input={inp}")
    assert_clean_error(proc, f"{out}/run.json", "holds verdicts of another judge run", *needles)
    assert (out / "verdicts.jsonl").read_bytes() == before


def test_judge_resume_with_another_third_candidate_image_is_refused(tiny, tmp_path):
    """Every candidate's media is in the identity, not only the first pair's: candidate 3's image redrawn
    under the same name refuses the resume (only candidates 1 and 2 were stamped)."""
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (56, 56), colour).save(tmp_path / f"c{i}.png")
    inp = tmp_path / "cands.jsonl"
    inp.write_text(json.dumps({"id": "x", "question": "Which picture is red?",
                               "candidates": [{"image": f"c{i}.png"} for i in range(3)]}) + "\n")
    out = tmp_path / "run"
    proc = cli("judge", *common(tiny, out), f"judge.input={inp}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(json.loads((out / "run.json").read_text())["media"]) == {"c0.png", "c1.png", "c2.png"}
    before = (out / "verdicts.jsonl").read_bytes()
    Image.new("RGB", (56, 56), "yellow").save(tmp_path / "c2.png")
    proc = cli("judge", *common(tiny, out), f"judge.input={inp}")
    assert_clean_error(proc, f"{out}/run.json", "1 image(s) changed since its verdicts were written", "c2.png")
    assert (out / "verdicts.jsonl").read_bytes() == before


def test_judge_rerun_of_the_same_run_writes_nothing(made, tiny, tmp_path):
    out = copy_of(made["judge"], tmp_path)
    before = (out / "verdicts.jsonl").read_bytes()
    proc = cli("judge", *common(tiny, out), f"judge.input={made['data']}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verdicts for 3 of 3 items" in proc.stdout and "0 written now, 3 by an earlier run" in proc.stdout
    assert (out / "verdicts.jsonl").read_bytes() == before


def test_judge_cut_last_line_is_repaired(made, tiny, tmp_path):
    out = copy_of(made["judge"], tmp_path)
    verdicts = out / "verdicts.jsonl"
    want = lines(verdicts)
    verdicts.write_bytes(b"".join(want[:-1]) + want[-1][:30] + b"\n")
    proc = cli("judge", *common(tiny, out), f"judge.input={made['data']}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"repaired {verdicts}:3" in proc.stderr
    assert "1 written now, 2 by an earlier run, 1 cut line repaired" in proc.stdout
    assert lines(verdicts) == want


def test_judge_garbage_line_in_the_middle_is_refused(made, tiny, tmp_path):
    out = copy_of(made["judge"], tmp_path)
    verdicts = out / "verdicts.jsonl"
    old = lines(verdicts)
    verdicts.write_bytes(old[0] + b"\x00\x01 not json\n" + b"".join(old[1:]))
    proc = cli("judge", *common(tiny, out), f"judge.input={made['data']}")
    assert_clean_error(proc, f"{verdicts}:2", "delete that line")


# ---------------------------------------------------------------- training: clean-up on every start
def test_start_removes_half_written_checkpoints_without_a_complete_one(tiny, tmp_path):
    """A run killed inside its first checkpoint's write has no checkpoint to resume: its next start
    still removes the `.tmp-step-` (and a `.del-step-`) folder, says so, and trains from step 0."""
    from r1rm.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "d", 4, seed=3, levels=(1,), modality="text", prefix="train")
    out = tmp_path / "sft"
    for junk in (out / "checkpoints" / ".tmp-step-0000001", out / "checkpoints" / ".del-step-0000003"):
        junk.mkdir(parents=True)
        (junk / "model.safetensors").write_bytes(b"cut")
    proc = cli("sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={tiny}", f"data.train=[{data}]",
               f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none", "sft.max_steps=1",
               "sft.batch_size=2", "sft.micro_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "removed what a killed run left half-written: .del-step-0000003, .tmp-step-0000001" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
