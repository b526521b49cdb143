"""The bad-input catalogue: recipes, overrides, data files and images that are wrong.

Every case runs the real CLI and must give exit code 2, a message that names the file (and
the line where there is one) and says what to fix, no traceback, and no partial output
presented as complete (data cases: the bad row lands in the rejects file with its reason;
config cases: the run's output folder is never created)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
GOOD = {"uid": "u1", "question": "What colour is the shape?", "response1": "It is red.", "response2": "It is blue.",
        "label": 1, "modality": "text"}


def row(**kw) -> str:
    r = {**GOOD, **kw}
    return json.dumps({k: v for k, v in r.items() if v is not ...})


def png(path: Path, size=(32, 32)) -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path)


def huge_png_header(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels (no pixel data): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def image_row(name: str) -> str:
    return row(modality="image", images=[name])


# (case id, lines of the data file (str or bytes), files to create beside it, reason code expected)
DATA_CASES = [
    ("truncated_json_line", [row()[:-7]], {}, "invalid_json"),
    ("not_an_object", ['["a", "b"]'], {}, "not_object"),
    ("label_3", [row(label=3)], {}, "bad_label"),
    ("label_wrong_type", [row(label="first")], {}, "bad_label"),
    ("question_wrong_type", [row(question=42)], {}, "wrong_type"),
    ("empty_response", [row(response2="   ")], {}, "empty_response"),
    ("missing_response", [row(response2=...)], {}, "missing_field"),
    ("identical_responses", [row(response2="It is red.")], {}, "identical_responses"),
    ("unknown_modality", [row(modality="smell")], {}, "bad_modality"),
    ("unknown_field", [row(lable=2)], {}, "unknown_field"),
    ("duplicate_ids", [row(), row()], {}, "duplicate_uid"),
    ("non_utf8_bytes", [row().encode()[:-2] + b"\xff\xfe\"}"], {}, "not_utf8"),
    ("image_missing", [image_row("nope.png")], {}, "missing_image"),
    ("image_zero_bytes", [image_row("zero.png")], {"zero.png": b""}, "empty_image"),
    ("image_corrupt", [image_row("bad.png")], {"bad.png": b"\x89PNG\r\n\x1a\nthis is not a png"}, "corrupt_image"),
    ("image_truncated", [image_row("cut.png")], {"cut.png": "truncated"}, "corrupt_image"),
    ("image_huge", [image_row("huge.png")], {"huge.png": "huge"}, "image_too_large"),
    ("image_path_outside_root", [image_row("../outside.png")], {}, "path_escapes_root"),
    ("image_modality_without_images", [row(modality="image")], {}, "missing_field"),
]


def _materialise(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        p = tmp / name
        if content == "truncated":
            png(p, (64, 64))
            p.write_bytes(p.read_bytes()[:60])
        elif content == "huge":
            huge_png_header(p, 60_000, 60_000)
        else:
            p.write_bytes(content)
    png(tmp.parent / "outside.png")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})})


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert "fix:" in proc.stderr, proc.stderr[-2000:]
    for n in needles:
        assert n in out, (n, out[-2000:])


@pytest.mark.parametrize("case,lines,files,reason", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, case, lines, files, reason):
    d = tmp_path / "data"
    d.mkdir()
    _materialise(d, files)
    f = d / "pairs.jsonl"
    f.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    rejects = tmp_path / "rejects.jsonl"
    proc = cli("check-data", f, "--rejects", rejects)
    bad_line = len(lines)  # the last line is the bad one in every case
    assert_clean_error(proc, f"pairs.jsonl:{bad_line}", reason)
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rej] == [(bad_line, reason)]
    assert rej[0]["raw"]  # the row itself is kept, nothing lost


def test_empty_data_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    assert_clean_error(cli("check-data", f), "empty.jsonl", "empty")


def test_missing_data_file(tmp_path):
    assert_clean_error(cli("check-data", tmp_path / "absent.jsonl"), "absent.jsonl")


def recipe(tmp: Path, text: str) -> Path:
    p = tmp / "r.yaml"
    p.write_text(text)
    return p


# (case id, recipe text or None for the tiny sft recipe, overrides, text the message must hold)
CONFIG_CASES = [
    ("recipe_key_typo", "sft:\n  lr: 1.0e-5\n  bacth_size: 8\n", [], ["r.yaml:3", "batch_size"]),
    ("recipe_not_yaml", "sft:\n  lr: [1.0e-5\n", [], ["r.yaml"]),
    ("recipe_wrong_type", "sft:\n  lr: fast\n", [], ["r.yaml:2", "sft.lr"]),
    ("recipe_top_level_list", "- sft\n- rl\n", [], ["r.yaml"]),
    ("recipe_inherit_missing", "inherit: nowhere.yaml\n", [], ["nowhere.yaml"]),
    ("negative_batch_size", None, ["sft.batch_size=-8"], ["sft.batch_size"]),
    ("batch_not_divisible_by_micro", None, ["sft.batch_size=8", "sft.micro_batch_size=3"], ["micro_batch_size"]),
    ("override_unknown_key", None, ["sft.learning_rate=1e-5"], ["sft.learning_rate", "valid keys under sft"]),
    ("override_without_value", None, ["sft.lr"], ["sft.lr", "key=value"]),
    ("unknown_benchmark_name", None, ["eval.benchmark=vl-rewardbenh"], ["eval.benchmark", "vl-rewardbench"]),
    ("min_pixels_above_max", None, ["model.min_pixels=9999999"], ["min_pixels"]),
    ("rl_batches_do_not_divide", None, ["rl.train_batch_size=7"], ["train_batch_size"]),
]


@pytest.mark.parametrize("case,text,overrides,needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_recipe_or_override(tmp_path, case, text, overrides, needles):
    path = recipe(tmp_path, text) if text is not None else REPO / "recipes/tiny/sft.yaml"
    out = tmp_path / "run"
    proc = cli("sft", "--recipe", path, f"output_dir={out}", *overrides)
    assert_clean_error(proc, *needles)
    assert not out.exists()  # nothing half-made


def test_batch_not_divisible_by_process_count(tmp_path):
    from r1rm.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "d", 8, seed=0, levels=(1,), modality="text", prefix="train")
    out = tmp_path / "run"
    # what torchrun sets for the second of two processes; the check runs before any process group
    proc = cli("rl", "--recipe", "recipes/tiny/rl.yaml", f"data.train=[{data}]", "data.eval=[]", f"output_dir={out}",
               "rl.rollout_batch_size=3", "rl.train_batch_size=6", env={"WORLD_SIZE": "2", "RANK": "0"})
    assert_clean_error(proc, "rollout_batch_size=3", "2 processes")


def test_unknown_synthetic_level_and_missing_model(tmp_path):
    assert_clean_error(cli("synth", "--recipe", "recipes/tiny/synth.yaml", f"output_dir={tmp_path / 's'}",
                           "data.synthetic.levels=[9]"), "level")
    data = tmp_path / "pairs.jsonl"
    data.write_text(row() + "\n")
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={tmp_path / 'no-model'}",
               f"data.eval=[{data}]", f"output_dir={tmp_path / 'e'}")
    assert_clean_error(proc, "no-model")
    assert not (tmp_path / "e" / "metrics.json").exists()
