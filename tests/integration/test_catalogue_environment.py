"""Bad-input catalogue, class "the environment" (issue 26, class 3): an output_dir that cannot be
made, a damaged checkpoint, a data path that is a device or a FIFO, a disk that fills up.

Every case runs the real CLI and must give exit code 2, a message naming the file and the fix, no
traceback — found by the pre-flight before the model loads (the run's folder is never created),
and, for a FIFO or /dev/zero, without hanging (the path is stat-ed, never opened)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input_catalogue import REPO, assert_clean_error, cli, row

EVAL = ("eval", "--recipe", "recipes/tiny/eval.yaml", "runtime.report_to=none", "runtime.progress=false")


@pytest.fixture
def pairs(tmp_path) -> Path:
    f = tmp_path / "pairs.jsonl"
    f.write_text(row(uid="a") + "\n" + row(uid="b") + "\n")
    return f


def _damage(model: Path, case: str) -> str:
    """Damage a copy of the tiny checkpoint as `case` says; returns the file the message must name."""
    st, cj = model / "model.safetensors", model / "config.json"
    if case == "weights_zero_bytes":
        st.write_bytes(b"")
    elif case == "weights_truncated_in_data":
        os.truncate(st, st.stat().st_size // 2)
    elif case == "weights_truncated_in_header":
        os.truncate(st, 100)
    elif case == "weights_trailing_bytes":
        with open(st, "ab") as f:
            f.write(b"\0" * 10)
    elif case == "weights_header_not_json":
        st.write_bytes((16).to_bytes(8, "little") + b"this is not json" + b"\0" * 64)
    elif case == "weights_header_too_deep":  # a RecursionError in the header check before the guarded reader
        deep = b"[" * 100_000 + b"]" * 100_000
        st.write_bytes(len(deep).to_bytes(8, "little") + deep)
    elif case == "weights_missing":
        st.unlink()
        return "no weights"
    elif case == "index_names_missing_shard":
        (model / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
        return "model-00002-of-00002.safetensors"
    elif case == "config_too_deep":  # a RecursionError in the config check before the guarded reader
        cj.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return "config.json"
    elif case == "config_not_json":
        cj.write_text(cj.read_text()[:200])
        return "config.json:"
    else:
        cfg = json.loads(cj.read_text())
        if case == "config_negative_size":
            cfg["text_config"]["hidden_size"] = -128
        elif case == "config_size_is_text":
            cfg["text_config"]["num_hidden_layers"] = "four"
        elif case == "config_size_is_bool":
            cfg["vision_config"]["depth"] = True
        elif case == "config_unknown_model_type":
            cfg["model_type"] = "qwen9_vl"
        cj.write_text(json.dumps(cfg, indent=2))
        return "config.json:"
    return str(st)


CHECKPOINT_CASES = [
    ("weights_zero_bytes", "empty (0 bytes)"),
    ("weights_truncated_in_data", "truncated"),
    ("weights_truncated_in_header", "truncated"),
    ("weights_trailing_bytes", "trailing bytes"),
    ("weights_header_not_json", "no valid safetensors header"),
    ("weights_missing", "*.safetensors"),
    ("index_names_missing_shard", "missing shard"),
    ("config_not_json", "not valid JSON"),
    ("config_too_deep", "nested deeper than"),
    ("weights_header_too_deep", "nested deeper than"),
    ("config_negative_size", "text_config.hidden_size = -128 is not a positive integer"),
    ("config_size_is_text", 'text_config.num_hidden_layers = "four"'),
    ("config_size_is_bool", "vision_config.depth = true"),
    ("config_unknown_model_type", 'model_type "qwen9_vl"'),
]


@pytest.mark.parametrize("case,needle", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_damaged_checkpoint_is_refused_before_loading(tiny, tmp_path, pairs, case, needle):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    names = _damage(model, case)
    out = tmp_path / "run"
    proc = cli(*EVAL, f"model.path={model}", f"eval.path={pairs}", f"output_dir={out}")
    assert_clean_error(proc, names, needle)
    assert not out.exists()  # found before anything was written


def test_damaged_checkpoint_stops_training_before_the_model_loads(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    os.truncate(model / "model.safetensors", 1000)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(row(uid=f"u{i}", meta={"target": "<answer>1</answer>"}) + "\n" for i in range(2)))
    out = tmp_path / "run"
    proc = cli("sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={model}", f"data.train=[{data}]",
               "sft.batch_size=2", "sft.micro_batch_size=1", f"output_dir={out}")
    assert_clean_error(proc, "model.safetensors", "truncated")
    assert not out.exists()


# every command that writes a folder checks output_dir first: a parent that is a file
OUTPUT_DIR_COMMANDS = {
    "eval": lambda m, d: [*EVAL, f"model.path={m}", f"eval.path={d}"],
    "sft": lambda m, d: ["sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={m}", f"data.train=[{d}]"],
    "rl": lambda m, d: ["rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={m}", f"data.train=[{d}]", "data.eval=[]"],
    "judge": lambda m, d: ["judge", "--recipe", "recipes/tiny/judge.yaml", f"model.path={m}", f"judge.input={d}"],
    "synth": lambda m, d: ["synth", "--recipe", "recipes/tiny/synth.yaml", "data.synthetic.n=4", "data.synthetic.n_eval=2"],
    "build-data": lambda m, d: ["build-data", "--recipe", "recipes/tiny/build_text.yaml"],
}


@pytest.mark.parametrize("command", list(OUTPUT_DIR_COMMANDS))
def test_output_dir_under_a_file(tiny, tmp_path, pairs, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = cli(*OUTPUT_DIR_COMMANDS[command](tiny, pairs), f"output_dir={blocker / 'run'}")
    assert_clean_error(proc, f"output_dir '{blocker / 'run'}'", f"'{blocker}' is a file")


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_output_dir_that_is_not_a_folder(tiny, tmp_path, pairs, kind):
    out = tmp_path / "run"
    out.write_text("x") if kind == "file" else os.mkfifo(out)
    proc = cli(*EVAL, f"model.path={tiny}", f"eval.path={pairs}", f"output_dir={out}")
    assert_clean_error(proc, f"output_dir '{out}' exists and is not a folder")


def _fifo(tmp_path: Path) -> Path:
    p = tmp_path / "pipe.jsonl"
    os.mkfifo(p)
    return p


# a data path that is a FIFO or a device: stat-ed and refused, never opened (opening a FIFO with no
# writer blocks for ever; reading /dev/zero never ends)
STREAM_CASES = {
    "eval_path_fifo": (lambda m, f, o: [*EVAL, f"model.path={m}", f"eval.path={f}", f"output_dir={o}"], "FIFO"),
    "eval_path_dev_zero": (lambda m, f, o: [*EVAL, f"model.path={m}", "eval.path=/dev/zero", f"output_dir={o}"],
                           "character device"),
    "eval_benchmark_path_fifo": (lambda m, f, o: [*EVAL, f"model.path={m}", "eval.benchmark=vl-rewardbench",
                                                  f"eval.path={f}", f"output_dir={o}"], "eval.path"),
    "sft_train_fifo": (lambda m, f, o: ["sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={m}",
                                        f"data.train=[{f}]", f"output_dir={o}"], "FIFO"),
    "judge_input_fifo": (lambda m, f, o: ["judge", "--recipe", "recipes/tiny/judge.yaml", f"model.path={m}",
                                          f"judge.input={f}", f"output_dir={o}"], "judge.input"),
    "check_data_dev_zero": (lambda m, f, o: ["check-data", "/dev/zero"], "character device"),
    "check_data_fifo": (lambda m, f, o: ["check-data", f], "FIFO"),
    "vote_generations_fifo": (lambda m, f, o: ["vote", "--recipe", "recipes/tiny/vote.yaml", f"vote.generations={f}",
                                               f"output_dir={o}"], "generations file"),
    "from_generations_dev_zero": (lambda m, f, o: [*EVAL, "--from-generations", "/dev/zero", f"output_dir={o}"],
                                  "character device"),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_data_path_that_is_a_stream(tiny, tmp_path, case):
    args, needle = STREAM_CASES[case]
    fifo = _fifo(tmp_path)
    out = tmp_path / "run"
    proc = cli(*args(tiny, fifo, out))
    assert_clean_error(proc, needle, "not a regular file", "fix: point to a regular file")
    assert not out.exists()


def test_build_data_source_that_is_a_fifo(tmp_path):
    fifo = _fifo(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nbuild:\n  sources:\n"
                      f"    - {{name: s, format: canonical, path: {fifo}}}\n")
    proc = cli("build-data", "--recipe", recipe)
    assert_clean_error(proc, str(fifo), "FIFO")


def _limit_file_size(limit: int):
    def set_limit() -> None:  # a file-size limit: writing past it fails with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_disk_full_while_writing_outputs(tiny, tmp_path, pairs):
    """No room for the resolved config (writes past 1.5 KB fail): exit 2 naming the file, no temporary left."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", *EVAL, f"model.path={tiny}", f"eval.path={pairs}",
                           f"output_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, preexec_fn=_limit_file_size(1500))
    assert_clean_error(proc, f"cannot write '{out / 'config.yaml'}'", "file size limit")
    assert list(out.iterdir()) == []  # the half-written temporary is gone


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_atomic_writer_and_appender_name_the_file(tmp_path, monkeypatch, err):
    from r1rm.data import files
    from r1rm.errors import InputFileError

    target = tmp_path / "metrics.json"

    def failing_replace(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(InputFileError, match="cannot write .*metrics.json") as e:
        files.write_json_atomic(target, {"a": 1})
    assert e.value.fix and not target.exists() and list(tmp_path.iterdir()) == []
    appender = files.JsonlAppender(tmp_path / "generations.jsonl")
    appender._f.close()
    appender._f = open("/dev/full", "w") if err == errno.ENOSPC else _Raising(err)
    with pytest.raises(InputFileError, match="cannot write .*generations.jsonl"):
        appender.append({"key": 1})


class _Raising:
    def __init__(self, err: int):
        self.err = err

    def write(self, _text: str) -> None:
        raise OSError(self.err, os.strerror(self.err))

    flush = close = lambda self: None
