"""The CLI shell: help, start-up cost, config errors, data errors, exit codes."""

import json
import subprocess
import sys

import pytest
import yaml

from r1rm import cli as cli_module
from r1rm.errors import ConfigError


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['r1rm', '--help']\n"
        "try:\n    runpy.run_module('r1rm.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})
    assert "NO_TORCH 0" in proc.stdout
    for cmd in ("tiny-model", "synth", "check-data", "config-schema"):
        assert cmd in proc.stdout


def test_print_config_applies_overrides_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "o"
    proc = cli("synth", "--recipe", "recipes/tiny/synth.yaml", f"output_dir={out}", "rl.lr=2e-6", "--print-config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["rl"]["lr"] == pytest.approx(2e-6) and cfg["output_dir"] == str(out)
    assert cfg["data"]["synthetic"]["levels"] == [1]
    assert not out.exists()


def test_recipe_typo_is_exit_2_with_file_line(cli, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("output_dir: x\ndata:\n  synthetic:\n    nn: 3\n")
    assert_user_error(cli("synth", "--recipe", r), f"{r}:4", "unknown key 'data.synthetic.nn'", "did you mean 'data.synthetic.n'")


def test_bad_override_and_missing_recipe(cli, tmp_path):
    assert_user_error(cli("synth", "data.synthetic.levels=[9]"), "levels must be a non-empty list of integers 1-6")
    assert_user_error(cli("synth", "sft.batch_size=-1"), "sft.batch_size", "greater than or equal to 1")
    assert_user_error(cli("synth", "rl.lr"), "has no '='")
    assert_user_error(cli("synth", "--recipe", tmp_path / "missing.yaml"), "recipe not found")


def test_synth_then_check_data(cli, tmp_path):
    out = tmp_path / "d"
    proc = cli("synth", f"output_dir={out}", "data.synthetic.n=12", "data.synthetic.n_eval=6", "data.synthetic.n_val=4",
               "data.synthetic.levels=[1,4]")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["synthetic"]["n"] == 12
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert len(train) == 12 and len(held) == 6 and len(val) == 4
    # three different draws: no pair in two splits, and every split label-balanced
    uids = [{r["uid"] for r in split} for split in (train, held, val)]
    assert not (uids[0] & uids[1] or uids[0] & uids[2] or uids[1] & uids[2])
    assert sum(r["label"] == 1 for r in train) == 6 and sum(r["label"] == 1 for r in val) == 2
    proc = cli("check-data", out / "train.jsonl", out / "eval.jsonl", out / "val.jsonl")
    assert proc.returncode == 0, proc.stderr
    # no validation split unless asked for
    proc = cli("synth", f"output_dir={tmp_path / 'e'}", "data.synthetic.n=4", "data.synthetic.n_eval=2")
    assert proc.returncode == 0 and not (tmp_path / "e" / "val.jsonl").exists()


def test_check_data_reports_bad_lines_and_media(cli, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    (tmp_path / "zero.png").write_bytes(b"")
    full = tmp_path / "full.png"
    Image.new("RGB", (64, 64), "blue").save(full)
    (tmp_path / "trunc.png").write_bytes(full.read_bytes()[:60])
    base = {"question": "Q", "response1": "a", "response2": "b", "label": 1}
    lines = [
        {**base, "id": "ok", "images": ["ok.png"]},
        {**base, "id": "zero", "images": ["zero.png"]},
        {**base, "id": "trunc", "images": ["trunc.png"]},
        {**base, "id": "missing", "images": ["nope.png"]},
        {**base, "id": "label", "label": 3},
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    proc = cli("check-data", data, "--rejects", rejects)
    assert_user_error(proc, f"{data}:2", f"{data}:3", f"{data}:4", f"{data}:5", "4 bad line(s)")
    got = {r["line"]: r["reason"] for r in map(json.loads, rejects.read_text().splitlines())}
    assert got == {2: "empty_image", 3: "corrupt_image", 4: "missing_image", 5: "bad_label"}
    # without media checks only the label is wrong
    assert_user_error(cli("check-data", data, "--no-check-media"), "1 bad line(s)", f"{data}:5")


def test_check_data_missing_file(cli, tmp_path):
    assert_user_error(cli("check-data", tmp_path / "none.jsonl"), "data file not found")


def test_tiny_model_bad_arch(cli, tmp_path):
    assert_user_error(cli("tiny-model", tmp_path / "m", "--arch", "llama"), "unknown --arch 'llama'")


def test_user_error_vs_bug(monkeypatch, capsys):
    def user_mistake(*a, **k):
        raise ConfigError("bad thing [x]", fix="do y")

    monkeypatch.setattr(sys, "argv", ["r1rm", "synth"])
    monkeypatch.setattr(cli_module, "_resolve", user_mistake)
    with pytest.raises(SystemExit) as e:
        cli_module.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bad thing [x]" in err and "fix: do y" in err

    def bug(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(cli_module, "_resolve", bug)
    with pytest.raises(KeyError):
        cli_module.main()


def test_config_schema_lists_keys(cli):
    proc = cli("config-schema")
    assert proc.returncode == 0
    keys = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert "rl.adv_filter" in keys and "eval.orders" in keys and "runtime.deepspeed" in keys
