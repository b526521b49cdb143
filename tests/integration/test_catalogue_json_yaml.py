"""Bad-input catalogue, class "Hostile JSON and YAML" (issue 26 §2), through the real CLI.

Every JSON a user hands r1rm goes through one guarded decoder (r1rm.data.files.loads_json: nesting
bounded by MAX_JSON_DEPTH before the C decoder recurses, a key given twice and NaN / Infinity refused,
a line bounded by MAX_LINE_BYTES and read past, a BOM skipped, a JSON array said once), and every
YAML through one guarded loader (load_yaml: alias expansion bounded while composing, recursive
aliases, `!!python/` tags, nesting and keys given twice refused). A refusal is exit 2 naming the
file (and line) and the fix, no traceback; the bombs are refused within 2 s of CPU and 500 MB of
the same command's memory on a normal input, measured on the child process (os.wait4).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from test_bad_input_catalogue import GOOD, REPO, assert_clean_error, cli, row

GOOD_LINE = row().encode()
ROW2 = json.dumps({**GOOD, "uid": "u2"}).encode()


# runs the CLI as `python -m r1rm.cli` does and writes its own /proc/self/status at exit: VmHWM is the peak
# RSS of the CLI's own memory (wait4's ru_maxrss would also count the forking test process's pages)
_LAUNCH = """import atexit, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(open("/proc/self/status").read()))
sys.argv = ["r1rm", *sys.argv[2:]]
runpy.run_module("r1rm.cli", run_name="__main__", alter_sys=True)
"""


def measured(*args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run the CLI like `cli`; also return the child's CPU seconds and its peak RSS in MB."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc (Linux)")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        status_file = Path(tmp) / "status"
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            p = subprocess.Popen([sys.executable, "-c", _LAUNCH, status_file, *map(str, args)], cwd=REPO, stdout=out,
                                 stderr=err, env=env)
            timer = threading.Timer(120, p.kill)
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            proc = subprocess.CompletedProcess(args, p.returncode, out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))
        hwm = re.search(r"VmHWM:\s+(\d+) kB", status_file.read_text())
    return proc, ru.ru_utime + ru.ru_stime, int(hwm.group(1)) / 1024


def assert_bounded(bomb: tuple, normal: tuple) -> None:
    (_, cpu, rss), (_, cpu0, rss0) = bomb, normal
    assert cpu - cpu0 < 2.0, (cpu, cpu0)
    assert rss - rss0 < 500, (rss, rss0)


def counted(proc: subprocess.CompletedProcess, valid: int, rejected: int) -> bool:
    """check-data's table row: valid, rejected, label 1, label 2, modalities."""
    return re.search(rf"│ {valid}\s+│ {rejected}\s+│ \d+\s+│ \d+\s+│ text:", proc.stdout) is not None


# ---------------------------------------------------------------- data files through check-data
# (case id, file bytes, reason of the bad line (None: accepted), bad line, text the message must hold)
DATA_CASES = [
    ("deep_nesting_100k_brackets", GOOD_LINE + b"\n" + b"[" * 100_000 + b"\n", "json_too_deep", 2, "100 levels"),
    ("deep_nesting_in_objects", GOOD_LINE + b"\n" + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n", "json_too_deep", 2,
     "flatten"),
    ("duplicate_key", GOOD_LINE + b"\n" + ROW2[:-1] + b', "label": 2}\n', "duplicate_key", 2, "'label' is given twice"),
    ("nan_literal", GOOD_LINE + b"\n" + ROW2[:-1] + b', "meta": {"score": NaN}}\n', "invalid_json", 2, "NaN"),
    ("infinity_literal", ROW2[:-1] + b', "meta": {"score": -Infinity}}\n', "invalid_json", 1, "-Infinity"),
    ("nul_bytes", GOOD_LINE + b"\n" + b"\x00" * 64 + b"\n", "invalid_json", 2, "binary file"),
    ("bom_on_line_1", b"\xef\xbb\xbf" + GOOD_LINE + b"\n" + ROW2 + b"\n", None, 0, ""),
    ("crlf_line_ends", GOOD_LINE + b"\r\n" + ROW2 + b"\r\n", None, 0, ""),
    ("brackets_inside_strings", row(question="[" * 3000 + "{" * 3000).encode() + b"\n" + ROW2 + b"\n", None, 0, ""),
]


@pytest.mark.parametrize("case,content,reason,bad_line,needle", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_hostile_json_line(tmp_path, case, content, reason, bad_line, needle):
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(content)
    rejects = tmp_path / "rejects.jsonl"
    proc = cli("check-data", f, "--rejects", rejects)
    if reason is None:  # accepted: every line counted valid
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert counted(proc, 2, 0) and rejects.read_text() == ""
        return
    assert_clean_error(proc, f"pairs.jsonl:{bad_line}", reason, needle)
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rej] == [(bad_line, reason)]


def test_deep_nesting_is_refused_within_cpu_and_memory_bounds(tmp_path):
    normal, deep = tmp_path / "normal.jsonl", tmp_path / "deep.jsonl"
    normal.write_bytes(GOOD_LINE + b"\n")
    deep.write_bytes(GOOD_LINE + b"\n" + b"[" * 1_000_000 + b"\n")
    base = measured("check-data", normal)
    assert base[0].returncode == 0, base[0].stderr[-2000:]
    bomb = measured("check-data", deep)
    assert_clean_error(bomb[0], "deep.jsonl:2", "json_too_deep")
    assert_bounded(bomb, base)


def test_a_100_mb_line_is_refused_and_read_past(tmp_path):
    normal, big = tmp_path / "normal.jsonl", tmp_path / "big.jsonl"
    normal.write_bytes(GOOD_LINE + b"\n")
    with open(big, "wb") as f:
        f.write(GOOD_LINE + b"\n" + row(question="x").encode()[:-1].replace(b'"x"', b'"'))
        f.write(b"x" * 100 * 2**20 + b'"}\n' + ROW2 + b"\n")
    base = measured("check-data", normal)
    proc = measured("check-data", big, "--rejects", tmp_path / "rejects.jsonl")
    assert_clean_error(proc[0], "big.jsonl:2", "line_too_long", "64 MiB")
    assert counted(proc[0], 2, 1)  # the lines before and after it are read
    assert_bounded(proc, base)
    rej = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rej] == [(2, "line_too_long")] and rej[0]["raw"].startswith('{"uid"')


@pytest.mark.parametrize("case", ["array", "array_with_bom", "pretty_printed_object"])
def test_a_json_document_in_a_jsonl_file_is_said_once(tmp_path, case):
    f = tmp_path / "pairs.jsonl"
    doc = GOOD if case == "pretty_printed_object" else [GOOD, {**GOOD, "uid": "u2"}]
    f.write_bytes((b"\xef\xbb\xbf" if case == "array_with_bom" else b"") + json.dumps(doc, indent=2).encode())
    proc = cli("check-data", f)
    what = "one JSON object written over many lines" if case == "pretty_printed_object" else "a JSON array"
    assert_clean_error(proc, f"pairs.jsonl:1: this file is {what}, not JSON lines", "jq -c")
    assert proc.stderr.count("pairs.jsonl:") == 1


# ---------------------------------------------------------------- the other commands that read user JSON
def test_deep_nesting_in_judge_and_build_data(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(GOOD_LINE + b"\n" + b"[" * 100_000 + b"\n")
    proc = cli("judge", "--recipe", "recipes/tiny/judge.yaml", f"judge.input={f}", f"output_dir={tmp_path / 'j'}")
    assert_clean_error(proc, "pairs.jsonl:2", "nested deeper than 100 levels")
    recipe = tmp_path / "build.yaml"
    recipe.write_text(f"build:\n  mode: clean\n  sources:\n    - {{name: mine, format: jsonl, path: {f}}}\n")
    out = tmp_path / "b"
    proc = cli("build-data", "--recipe", recipe, f"output_dir={out}")
    assert_clean_error(proc, "pairs.jsonl:2", "json_too_deep: 1")
    assert [json.loads(x)["reason"] for x in (out / "rejects.jsonl").read_text().splitlines()] == ["json_too_deep"]


def test_deep_nesting_in_eval_and_sft(tiny, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"[" * 100_000 + b"\n" + GOOD_LINE + b"\n")
    common = [f"model.path={tiny}", "runtime.device=cpu", "runtime.report_to=none"]
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", *common, f"data.eval=[{f}]", f"output_dir={tmp_path / 'e'}")
    assert_clean_error(proc, "pairs.jsonl:1", "nested deeper than 100 levels")
    assert not (tmp_path / "e" / "metrics.json").exists()
    proc = cli("sft", "--recipe", "recipes/tiny/sft.yaml", *common, f"data.train=[{f}]", "data.eval=[]",
               f"output_dir={tmp_path / 's'}")
    assert_clean_error(proc, "pairs.jsonl:1", "nested deeper than 100 levels")
    assert not (tmp_path / "s" / "model").exists()


# ---------------------------------------------------------------- recipes and overrides
BOMB = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
               for p, k in zip(["", *"abcdefgh"], "abcdefghi", strict=True))
# the same keys without aliases: the same command stops at the same step (unknown sections)
NOT_A_BOMB = "".join(f"{k}: [lol, lol, lol]\n" for k in "abcdefghi")


def test_billion_laughs_is_refused_fast_and_small(tmp_path):
    bomb, normal = tmp_path / "bomb.yaml", tmp_path / "normal.yaml"
    bomb.write_text(BOMB)
    normal.write_text(NOT_A_BOMB)
    assert len(BOMB.encode()) < 400
    base = measured("sft", "--recipe", normal, f"output_dir={tmp_path / 'n'}")
    assert_clean_error(base[0], "normal.yaml:1")  # unknown sections a..i: a config error, not a bomb
    got = measured("sft", "--recipe", bomb, f"output_dir={tmp_path / 'o'}")
    assert_clean_error(got[0], "bomb.yaml:5", "alias bomb")
    assert_bounded(got, base)
    assert not (tmp_path / "o").exists()


# (case id, recipe text, overrides, texts the message must hold)
RECIPE_CASES = [
    ("recursive_alias", "sft:\n  lr: 1.0e-5\n  target_modules: &t [q_proj, *t]\n", [],
     ["r.yaml:3", "recursive alias", "fix:"]),
    ("key_given_twice", "sft:\n  lr: 1.0e-5\n  epochs: 1\n  lr: 2.0e-5\n", [],
     ["r.yaml:4", "'sft.lr' is given twice, on lines 2 and 4"]),
    ("section_given_twice", "sft:\n  lr: 1.0e-5\nmodel:\n  dtype: float32\nsft:\n  epochs: 2\n", [],
     ["r.yaml:5", "'sft' is given twice, on lines 1 and 5"]),
    ("yaml_nested_too_deep", "sft:\n  lr: " + "[" * 100_000 + "\n", [], ["r.yaml:2", "deeper than 50 levels"]),
    ("alias_bomb_in_an_override", None, ["sft.lr=" + BOMB.replace("\n", ", ").join("{}")], ["alias bomb", "sft.lr"]),
]


@pytest.mark.parametrize("case,text,overrides,needles", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_hostile_recipe(tmp_path, case, text, overrides, needles):
    path = tmp_path / "r.yaml"
    if text is None:
        path = REPO / "recipes/tiny/sft.yaml"
    else:
        path.write_text(text)
    out = tmp_path / "run"
    proc = cli("sft", "--recipe", path, f"output_dir={out}", *overrides)
    assert_clean_error(proc, *needles)
    assert not out.exists()


@pytest.mark.parametrize("where_", ["recipe", "override"])
def test_python_tags_are_refused_and_never_run(tmp_path, where_):
    marker = tmp_path / "PWNED"
    value = f"!!python/object/apply:os.system ['touch {marker}']"
    path = tmp_path / "r.yaml"
    path.write_text(f"sft:\n  lr: {value}\n" if where_ == "recipe" else "sft:\n  lr: 1.0e-5\n")
    extra = [] if where_ == "recipe" else [f"sft.lr={value}"]
    proc = cli("sft", "--recipe", path, f"output_dir={tmp_path / 'run'}", *extra)
    assert_clean_error(proc, "!!python/object/apply:os.system is not allowed", "never builds Python objects")
    if where_ == "recipe":
        assert "r.yaml:2" in proc.stderr
    assert not marker.exists()


def test_a_key_twice_in_an_inherited_recipe_names_that_file(tmp_path):
    (tmp_path / "parent.yaml").write_text("sft:\n  lr: 1.0e-5\n  lr: 2.0e-5\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: parent.yaml\nsft:\n  epochs: 1\n")
    proc = cli("sft", "--recipe", child, f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, "parent.yaml:3", "'sft.lr' is given twice, on lines 2 and 3")


def test_a_recipe_with_a_bom_keeps_its_line_numbers(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbfsft:\n  lr: 1.0e-5\n  bacth_size: 8\n")
    assert_clean_error(cli("sft", "--recipe", path, f"output_dir={tmp_path / 'run'}"), "r.yaml:3", "batch_size")
