"""Bad-input catalogue, class "numbers" (issue 26, class 6): every number bounded by what it means.

Through the real CLI: a length past the schema's bound (2^20 tokens) or past the model's own
positions, a seed outside 0..2^32-1, a boolean where a number goes and a number where a boolean
goes, NaN / infinity where a rate goes — exit 2 naming the key, where it came from (recipe
file:line or the override) and the bound; nothing is created. A prompt longer than the model's
positions is refused per item and counted (failures.jsonl, metrics.json), never generated from."""

from __future__ import annotations

import json

import pytest
from test_bad_input_catalogue import REPO, assert_clean_error, cli, row

# (case id, overrides, text the message must hold); the tiny eval recipe, no model needed: the
# config is refused before the command starts
CONFIG_CASES = [
    ("max_new_tokens_a_billion", ["generation.max_new_tokens=1000000000"],
     ["generation.max_new_tokens", "less than or equal to 1048576"]),
    ("rl_max_new_tokens_a_billion", ["rl.max_new_tokens=1000000000"], ["rl.max_new_tokens", "1048576"]),
    ("max_prompt_len_ten_million", ["rl.max_prompt_len=10000000"], ["rl.max_prompt_len", "1048576"]),
    ("sft_max_seq_len_ten_million", ["sft.max_seq_len=10000000"], ["sft.max_seq_len", "1048576"]),
    ("seed_10_to_the_23", ["seed=100000000000000000000000"], ["seed", "4294967295"]),
    ("seed_negative", ["seed=-1"], ["seed", "greater than or equal to 0"]),
    ("synthetic_seed_past_32_bits", ["data.synthetic.seed=4294967296"], ["data.synthetic.seed", "4294967295"]),
    ("eval_k_true", ["eval.k=true"], ["eval.k", "True is a boolean, not a number"]),
    ("port_false", ["judge.port=false"], ["judge.port", "boolean, not a number"]),
    ("levels_list_of_booleans", ["data.synthetic.levels=[true, 2]"], ["data.synthetic.levels", "boolean"]),
    ("lr_a_boolean", ["rl.lr=true"], ["rl.lr", "boolean, not a number"]),
    ("progress_one", ["runtime.progress=1"], ["runtime.progress", "1 is not a boolean; write true or false"]),
    ("resume_zero", ["runtime.resume=0"], ["runtime.resume", "not a boolean"]),
    ("lr_nan", ["rl.lr=.nan"], ["rl.lr"]),
    ("lr_infinite", ["sft.lr=.inf"], ["sft.lr", "inf is not a finite number"]),
    ("temperature_infinite", ["generation.temperature=.inf"], ["generation.temperature", "not a finite number"]),
    ("timeout_infinite", ["engine.timeout_s=.inf"], ["engine.timeout_s", "not a finite number"]),
    ("outlier_reward_nan", ["rl.stress.outlier_reward=.nan"], ["rl.stress.outlier_reward", "nan is not a finite"]),
    ("eval_k_two_thousand", ["eval.k=2000"], ["eval.k", "1024"]),
    ("max_pixels_a_gigapixel", ["model.max_pixels=1000000000"], ["model.max_pixels", "12845056"]),
]


@pytest.mark.parametrize("case,overrides,needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_number_out_of_its_meaning(tmp_path, case, overrides, needles):
    out = tmp_path / "run"
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", f"output_dir={out}", *overrides)
    assert_clean_error(proc, f"override '{overrides[0]}'", *needles)
    assert not out.exists()


def test_boolean_in_a_recipe_names_its_line(tmp_path):
    """YAML 1.1 reads `k: yes` as true: refused at the recipe's line, not run as k = 1."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("inherit: " + str(REPO / "recipes/tiny/eval.yaml") + "\neval:\n  k: yes\n")
    proc = cli("eval", "--recipe", recipe, f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, f"{recipe}:3", "eval.k", "boolean")


def test_bounds_themselves_are_accepted(tmp_path):
    """The largest seed and an explicit boolean pass; the resolved config keeps them as given."""
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", "seed=4294967295", "runtime.progress=false",
               "eval.k=3", "generation.max_new_tokens=1048576", "--print-config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed: 4294967295" in proc.stdout and "progress: false" in proc.stdout and "k: 3" in proc.stdout


@pytest.mark.parametrize("command", ["eval", "rl"])
def test_new_tokens_past_the_models_positions(tiny, tmp_path, command):
    """The tiny model has 4096 positions: 5000 new tokens cannot fit with any prompt — refused when the
    model is checked (config.json only), naming both numbers, before any folder or weights."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(row(uid=f"u{i}") + "\n" for i in range(16)))  # one rollout batch of the tiny recipe
    out = tmp_path / "run"
    if command == "eval":
        args = ["eval", "--recipe", "recipes/tiny/eval.yaml", f"eval.path={data}", "generation.max_new_tokens=5000"]
        key = "generation.max_new_tokens"
    else:
        args = ["rl", "--recipe", "recipes/tiny/rl.yaml", f"data.train=[{data}]", "data.eval=[]", "rl.max_new_tokens=5000"]
        key = "rl.max_new_tokens"
    proc = cli(*args, f"model.path={tiny}", f"output_dir={out}")
    assert_clean_error(proc, f"{key} (5000)", "4096 positions", f"lower {key} to at most 4095")
    assert not out.exists()


def test_prompt_longer_than_the_models_positions_is_refused_and_counted(tiny, tmp_path):
    """A ~18k-token prompt on a 4096-position model is not generated from (it took 72 s for one token):
    its item fails with prompt_too_long (counted in metrics.json and failures.jsonl), the short item is
    judged, and the run exits 2 saying what to change."""
    data = tmp_path / "pairs.jsonl"
    data.write_text(row(uid="long", question="What colour? " + "word " * 6000) + "\n" + row(uid="short") + "\n")
    out = tmp_path / "run"
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={tiny}", f"eval.path={data}",
               "generation.max_new_tokens=8", "runtime.report_to=none", "runtime.progress=false", f"output_dir={out}")
    assert_clean_error(proc, "prompt_too_long", "4096 positions", "lower generation.max_new_tokens")
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["key"][:2] for f in failures) == [["long", "chosen_first"], ["long", "chosen_second"]]
    assert all("max_new_tokens 8" in f["error"] for f in failures)
    generated = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted((g["uid"], g["order"]) for g in generated) == [("short", "chosen_first"), ("short", "chosen_second")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["n_missing_generations"] == 2
