"""The bad-input catalogue, class 1 (Images): the media gate (r1rm.data.media.admit_image) through the real CLI.

One gate for every reader and engine: a decompression bomb (a 17 KB PNG that decodes to 12000x12000), an
aspect ratio above 200, a truncated PNG and a text file named .png are refused — a record-level error
(file:line and reason; exit 2), a reject counted by build-data, or with eval.skip_missing_media an item
skipped and counted in metrics.json `skipped_by_reason` — while BMP, TIFF, a CMYK JPEG, a 16-bit PNG and an
animated GIF (its first frame) are accepted and scored (exit 0). For the bomb, every command's peak memory
(RUSAGE_CHILDREN of a fresh wrapper process) stays within 500 MB of the same command on normal images:
the gate refuses it from its header, before a pixel is decoded.

Each command runs once per module (fixtures) and the cases read their outcome from that run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_bad_input_catalogue import REPO, assert_clean_error

BOMB_MARGIN_MB = 500
# the images refused, and their reason
BAD = {"bomb.png": "image_too_large", "wide.png": "aspect_ratio", "cut.png": "corrupt_image", "text.png": "corrupt_image"}
# the images accepted (converted to RGB by the gate where no engine takes them as they are)
GOOD = ("ok.png", "ok.bmp", "ok.tiff", "cmyk.jpg", "g16.png", "anim.gif")
ALL = (*GOOD, *BAD)
TRACE = "<think>The shape is red.</think><answer>1</answer>"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 12000) -> None:
    """A real, complete 1-bit PNG of side x side black pixels: ~17 KB on disk, 144 MP (and ~0.7 GB of
    memory with PIL's 1-byte pixels plus the RGB copy) once decoded."""
    rows = zlib.compress(b"\0" * ((1 + (side + 7) // 8) * side), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))


def make_images(d: Path) -> None:
    rng = np.random.default_rng(0)
    bomb_png(d / "bomb.png")
    Image.new("RGB", (112, 112), (200, 30, 30)).save(d / "ok.png")
    Image.new("RGB", (112, 112), (30, 200, 30)).save(d / "ok.bmp")
    Image.new("RGB", (112, 112), (30, 30, 200)).save(d / "ok.tiff")
    Image.new("CMYK", (112, 112), (0, 200, 200, 0)).save(d / "cmyk.jpg")
    Image.fromarray((np.arange(112 * 112).reshape(112, 112) * 5).astype(np.uint16)).save(d / "g16.png")
    frames = [Image.new("RGB", (112, 112), c).convert("P") for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (600, 2), (9, 9, 9)).save(d / "wide.png")  # aspect ratio 300
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "cut.png")
    (d / "cut.png").write_bytes((d / "cut.png").read_bytes()[:2000])  # cut inside its pixel data
    (d / "text.png").write_text("this is a text file, not an image\n")


def write_records(path: Path, names, *, trace: bool = False) -> Path:
    base = {"question": "What colour is the shape?", "response1": "It is red.", "response2": "It is blue.",
            "label": 1, "modality": "image"}
    with open(path, "w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({**base, "uid": f"u{i}-{n}", "images": [n], **({"meta": {"trace": TRACE}} if trace else {})})
                    + "\n")
    return path


# a fresh wrapper process per measurement: its RUSAGE_CHILDREN peak is the CLI's alone
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def measured_cli(tmp: Path, *args) -> tuple[subprocess.CompletedProcess, float]:
    """`r1rm ARGS` in a fresh process; (the completed process, its peak resident memory in MB)."""
    peak = tmp / f"peak-{os.urandom(4).hex()}.txt"
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(peak), sys.executable, "-m", "r1rm.cli", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    mb = int(peak.read_text()) / 1024  # ru_maxrss is in KB on Linux
    print(f"peak {args[0]} (exit {proc.returncode}): {mb:.0f} MB")  # shown with pytest -s
    return proc, mb


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_images(d)
    return d


def test_the_bomb_is_small_on_disk_and_huge_decoded(media):
    assert (media / "bomb.png").stat().st_size < 20_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(media / "bomb.png") as im:
        assert im.size == (12000, 12000)


# ---------------------------------------------------------------- check-data: one run, every case
@pytest.fixture(scope="module")
def checked(media, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    data = write_records(media / "all.jsonl", ALL)
    rejects = tmp / "rejects.jsonl"
    proc, peak = measured_cli(tmp, "check-data", data, "--rejects", rejects, "--max-pixels", 12544)
    normal, base = measured_cli(tmp, "check-data", write_records(media / "one.jsonl", ["ok.png"]), "--max-pixels", 12544)
    assert normal.returncode == 0, normal.stderr[-2000:]
    rej = {r["line"]: r for r in map(json.loads, rejects.read_text().splitlines())}
    return proc, rej, peak, base


@pytest.mark.parametrize("name", ALL)
def test_check_data(checked, name):
    proc, rej, _, _ = checked
    line = ALL.index(name) + 1
    if name in GOOD:
        assert line not in rej  # accepted
        return
    assert_clean_error(proc, f"all.jsonl:{line}", BAD[name])
    assert rej[line]["reason"] == BAD[name] and name in rej[line]["message"] and rej[line]["raw"]


def test_check_data_bomb_memory(checked):
    _, _, peak, base = checked
    assert peak < base + BOMB_MARGIN_MB, (peak, base)


# ---------------------------------------------------------------- eval
def eval_args(tiny, data: Path, out: Path, *extra) -> list:
    return ["eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={tiny}", f"data.eval=[{data}]", f"output_dir={out}",
            "generation.max_new_tokens=4", "runtime.progress=false", "runtime.report_to=none", *extra]


@pytest.fixture(scope="module")
def evaluated(media, tiny, tmp_path_factory):
    """eval over every case with eval.skip_missing_media=true, and the same command on one normal image."""
    tmp = tmp_path_factory.mktemp("eval")
    out = tmp / "all"
    proc, peak = measured_cli(tmp, *eval_args(tiny, write_records(media / "eval-all.jsonl", ALL), out,
                                               "eval.skip_missing_media=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    normal, base = measured_cli(tmp, *eval_args(tiny, write_records(media / "eval-one.jsonl", ["ok.png"]), tmp / "one"))
    assert normal.returncode == 0, normal.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    scored = {json.loads(x)["uid"] for x in (out / "generations.jsonl").read_text().splitlines()}
    skipped = {json.loads(x)["line"]: json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()}
    return metrics, scored, skipped, peak, base


@pytest.mark.parametrize("name", ALL)
def test_eval_skips_and_counts_or_scores(evaluated, name):
    metrics, scored, skipped, _, _ = evaluated
    i = ALL.index(name)
    if name in GOOD:  # accepted and scored in both orders
        assert f"u{i}-{name}" in scored and i + 1 not in skipped
    else:
        assert f"u{i}-{name}" not in scored and skipped[i + 1]["reason"] == BAD[name]


def test_eval_counts_by_reason_and_bomb_memory(evaluated):
    metrics, _, _, peak, base = evaluated
    assert metrics["complete"] and metrics["n_items"] == len(GOOD) and metrics["n_skipped"] == len(BAD)
    assert metrics["skipped_by_reason"] == {"image_too_large": 1, "aspect_ratio": 1, "corrupt_image": 2}
    assert peak < base + BOMB_MARGIN_MB, (peak, base)


def test_eval_refuses_the_bomb_without_skip(media, tiny, tmp_path):
    data = write_records(media / "bomb.jsonl", ["bomb.png"])
    proc, peak = measured_cli(tmp_path, *eval_args(tiny, data, tmp_path / "e"))
    assert_clean_error(proc, "bomb.jsonl:1", "image_too_large", "12000x12000", "skip_missing_media")
    assert not (tmp_path / "e").exists()
    assert peak < 1500  # refused before decoding (decoded, the bomb alone takes ~0.7 GB more)


# ---------------------------------------------------------------- judge, sft, rl: refused with file:line
def judge_args(tiny, data: Path, out: Path) -> list:
    return ["judge", "--recipe", "recipes/tiny/judge.yaml", f"model.path={tiny}", f"judge.input={data}",
            f"output_dir={out}", "generation.max_new_tokens=4", "runtime.progress=false", "runtime.report_to=none"]


def sft_args(tiny, data: Path, out: Path) -> list:
    return ["sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={tiny}", f"data.train=[{data}]", f"output_dir={out}",
            "sft.max_steps=1", "sft.batch_size=6", "sft.micro_batch_size=6", "sft.save_every_steps=100",
            "runtime.progress=false", "runtime.report_to=none"]


def rl_args(tiny, data: Path, out: Path) -> list:
    return ["rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={tiny}", f"data.train=[{data}]", "data.eval=[]",
            f"output_dir={out}", "rl.max_steps=1", "rl.rollout_batch_size=6", "rl.n_samples_per_prompt=2",
            "rl.train_batch_size=12", "rl.micro_batch_size=12", "rl.both_orders=false", "rl.max_new_tokens=4",
            "rl.eval_every_steps=0", "rl.save_every_steps=100", "runtime.progress=false", "runtime.report_to=none"]


@pytest.mark.parametrize("command,args", [("judge", judge_args), ("sft", sft_args), ("rl", rl_args)])
def test_bomb_refused_within_memory_of_a_normal_run(media, tiny, tmp_path, command, args):
    """The bomb: exit 2 naming file:line and the reason, before any model is loaded; the same command on the
    accepted formats (BMP, TIFF, CMYK, 16-bit, animated GIF, PNG) runs to the end (exit 0) and its peak
    memory bounds the bomb's."""
    bad = write_records(media / f"bad-{command}.jsonl", ["ok.png", "bomb.png"], trace=True)
    proc, peak = measured_cli(tmp_path, *args(tiny, bad, tmp_path / "bomb"))
    assert_clean_error(proc, f"bad-{command}.jsonl:2", "image_too_large", "bomb.png")
    good = write_records(media / f"good-{command}.jsonl", GOOD, trace=True)
    normal, base = measured_cli(tmp_path, *args(tiny, good, tmp_path / "normal"))
    assert normal.returncode == 0, normal.stderr[-3000:]
    assert peak < base + BOMB_MARGIN_MB, (peak, base)
    if command == "judge":  # accepted and scored: a verdict for every item
        assert len((tmp_path / "normal" / "verdicts.jsonl").read_text().splitlines()) == len(GOOD)
    else:  # one finite training step over every format
        rows = [json.loads(x) for x in (tmp_path / "normal" / "metrics.jsonl").read_text().splitlines()]
        assert rows and rows[-1]["step"] == 1 and np.isfinite(rows[-1]["loss"])


# ---------------------------------------------------------------- build-data: rejects counted
def test_build_data_rejects_and_counts(media, tmp_path):
    def recipe(data: Path, out: Path) -> Path:
        p = tmp_path / f"{out.name}.yaml"
        p.write_text(yaml.safe_dump({
            "seed": 0, "output_dir": str(out), "model": {"path": "unused", "min_pixels": 3136, "max_pixels": 12544},
            "runtime": {"device": "cpu", "progress": False},
            "build": {"sources": [{"name": "c", "format": "canonical", "path": str(data)}], "max_reject_rate": 1.0}}))
        return p

    proc, peak = measured_cli(tmp_path, "build-data", "--recipe", recipe(write_records(media / "build.jsonl", ALL), tmp_path / "all"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    normal, base = measured_cli(tmp_path, "build-data", "--recipe", recipe(write_records(media / "b1.jsonl", ["ok.png"]), tmp_path / "one"))
    assert normal.returncode == 0, normal.stderr[-3000:]
    assert peak < base + BOMB_MARGIN_MB, (peak, base)
    m = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert m["n_records"] == len(GOOD)
    assert m["rejects_by_reason"] == {"image_too_large": 1, "aspect_ratio": 1, "corrupt_image": 2}
    rej = {r["line"]: r["reason"] for r in map(json.loads, (tmp_path / "all" / "rejects.jsonl").read_text().splitlines())}
    assert rej == {ALL.index(n) + 1: r for n, r in BAD.items()}
