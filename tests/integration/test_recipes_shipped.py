"""Built-in recipes ship with the package and run as shipped, by name, from any folder.

The wheel test builds the wheel (no deps, no build isolation), installs it with `pip install --target`
(not editable) and runs r1rm from an empty folder with only that copy on PYTHONPATH. `run_installed`
is the hook for more checks from outside the repository (an eval on a tiny model, for one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1rm.config import load_config
from r1rm.recipes import builtin_recipes, purpose

REPO = Path(__file__).resolve().parents[2]
NAMES = list(builtin_recipes())
EVAL_RECIPES = [n for n in NAMES if n.split("/")[0] in ("r1reward", "msrl") and "/eval_" in n or n == "r1reward/voting15"]


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "r1rm.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_builtin_recipes_are_the_repository_folder():
    files = sorted(p.relative_to(REPO / "recipes").with_suffix("").as_posix() for p in (REPO / "recipes").rglob("*.yaml"))
    assert NAMES == files and len(NAMES) >= 40


@pytest.mark.parametrize("name", NAMES)
def test_every_builtin_recipe_loads_by_name_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(name)
    assert re.search(r"[.)]$", purpose(builtin_recipes()[name])), f"{name}: its first comment line is its purpose, one sentence"
    if cfg.runtime.deepspeed:
        ds = Path(cfg.runtime.deepspeed)
        assert ds.is_absolute() and ds.is_file() and ds.is_relative_to(builtin_recipes()[name].parents[1])


@pytest.mark.parametrize("name", EVAL_RECIPES)
def test_eval_recipes_name_a_public_checkpoint_and_the_benchmark_release(name):
    cfg = load_config(name)
    hub_id = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    assert hub_id.match(cfg.model.path) and not cfg.model.path.startswith("out/"), cfg.model.path
    # Multimodal RewardBench is released on GitHub only (data/all_data.json after its download script)
    assert hub_id.match(cfg.eval.path) or cfg.eval.path == "multimodal_rewardbench/data/all_data.json", cfg.eval.path


def test_recipe_names_paths_and_mistakes_on_the_command_line(tmp_path):
    listing = _cli("recipes", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = dict(line.split(None, 1) for line in listing.stdout.splitlines())
    assert set(lines) == set(NAMES)
    assert "VL-RewardBench" in lines["r1reward/eval_vl_rewardbench"]
    shown = _cli("recipes", "tiny/eval", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == builtin_recipes()["tiny/eval"].read_text(encoding="utf-8")
    typo = _cli("eval", "--recipe", "r1reward/eval_vl_rewardbnch", "--print-config", cwd=tmp_path)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "r1reward/eval_vl_rewardbench" in typo.stderr and "r1rm recipes" in typo.stderr
    # a path that exists wins over a built-in name
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny/eval").write_text("output_dir: mine\n")
    mine = _cli("eval", "--recipe", "tiny/eval", "--print-config", cwd=tmp_path)
    assert mine.returncode == 0 and yaml.safe_load(mine.stdout)["output_dir"] == "mine"
    # your own recipe inherits a built-in one by name; its shipped DeepSpeed file comes along, absolute
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp/sft.yaml").write_text("# mine\ninherit: r1reward/sft\nsft:\n  lr: 2.0e-5\n")
    own = yaml.safe_load(_cli("sft", "--recipe", "exp/sft.yaml", "--print-config", cwd=tmp_path).stdout)
    assert own["sft"]["lr"] == 2e-5 and own["model"]["path"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert own["runtime"]["deepspeed"] == str(REPO / "recipes/deepspeed/zero3.json")
    # the repository spelling of a built-in recipe still works outside the repository
    old = _cli("sft", "--recipe", "recipes/r1reward/sft.yaml", "--print-config", cwd=tmp_path)
    assert yaml.safe_load(old.stdout)["runtime"]["deepspeed"] == str(REPO / "recipes/deepspeed/zero3.json")


def test_copy_out_a_recipe_and_its_shipped_files_then_run_the_copy(tmp_path):
    proc = _cli("recipes", "r1reward/rl_released", "--copy", "mine", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.relative_to(tmp_path / "mine").as_posix() for p in (tmp_path / "mine").rglob("*") if p.is_file())
    assert written == ["deepspeed/zero3.json", "r1reward/rl.yaml", "r1reward/rl_released.yaml", "r1reward/sft.yaml"]
    (tmp_path / "mine/deepspeed/zero3.json").write_text('{"zero_optimization": {"stage": 3}}\n')
    cfg = yaml.safe_load(_cli("rl", "--recipe", "mine/r1reward/rl_released.yaml", "--print-config", cwd=tmp_path).stdout)
    # the copy's DeepSpeed config (relative to the copied recipe), absolute in the resolved config
    assert cfg["runtime"]["deepspeed"] == str((tmp_path / "mine/deepspeed/zero3.json").resolve())
    assert cfg["rl"]["lr"] == 3e-7
    again = _cli("recipes", "r1reward/rl_released", "--copy", "mine", cwd=tmp_path)
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_deepspeed_override_resolves_against_the_current_folder(tmp_path):
    (tmp_path / "my.json").write_text("{}\n")
    cfg = yaml.safe_load(_cli("sft", "--recipe", "r1reward/sft", "runtime.deepspeed=./my.json", "--print-config",
                              cwd=tmp_path).stdout)
    assert cfg["runtime"]["deepspeed"] == str(tmp_path / "my.json")
    builtin = yaml.safe_load(_cli("sft", "--recipe", "tiny/sft", "runtime.deepspeed=deepspeed/zero2.json",
                                  "--print-config", cwd=tmp_path).stdout)
    assert builtin["runtime"]["deepspeed"] == str(REPO / "recipes/deepspeed/zero2.json")
    missing = _cli("sft", "--recipe", "tiny/sft", "runtime.deepspeed=nope.json", "--print-config", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.json" in missing.stderr and "deepspeed/zero3.json" in missing.stderr


def test_help_keeps_brackets_shows_an_example_and_the_version(tmp_path):
    import typer.main

    from r1rm.cli import EXAMPLES, app

    # rich markup would swallow a bare [word]: every help text escapes its brackets
    for name, command in typer.main.get_command(app).commands.items():
        for text in [command.help or "", command.epilog or "", *(getattr(p, "help", "") or "" for p in command.params)]:
            assert not re.search(r"(?<!\\)\[[^\]]*\]", text), (name, text)
    names = [c.name for c in app.registered_commands]
    assert set(names) <= set(EXAMPLES), set(names) - set(EXAMPLES)
    for name in names:
        proc = _cli(name, "--help", cwd=tmp_path)
        text = " ".join(proc.stdout.split())
        assert proc.returncode == 0 and "Example: " + EXAMPLES[name] in text, (name, text[-400:])
        if name == "eval":
            assert "eval.orders=[chosen_first]" in text
    root = _cli("--help", cwd=tmp_path)
    assert "Example: r1rm recipes" in root.stdout and "recipes" in root.stdout
    version = _cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"r1rm \d+\.\d+\.\d+\S*\n", version.stdout)


# ---------------------------------------------------------------- the wheel, installed outside the repository
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed (not editable) into a --target folder."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("r1rm", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    proc = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (work / "dist").glob("r1rm-*.whl")
    target = work / "site"
    proc = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`r1rm ARGS` with the installed wheel first on the path, from `cwd` (outside the repository)."""
    return _cli(*args, cwd=cwd, env={"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def test_wheel_holds_every_module_and_recipe(installed):
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "r1rm").rglob("*.py")}
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "r1rm").rglob("*.py")}
    assert modules <= shipped, f"modules missing from the wheel (add their package to pyproject.toml): {modules - shipped}"
    recipes = {p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*") if p.is_file()}
    in_wheel = {p.relative_to(installed / "r1rm/_recipes").as_posix() for p in (installed / "r1rm/_recipes").rglob("*")
                if p.is_file()}
    assert recipes == in_wheel, f"recipes missing from the wheel (list their folder in pyproject.toml): {recipes - in_wheel}"


def test_installed_wheel_lists_and_resolves_recipes_outside_the_repository(installed, tmp_path):
    where = run_installed(installed, tmp_path, "--version")
    assert where.returncode == 0, where.stderr
    proc = subprocess.run([sys.executable, "-c", "import r1rm, r1rm.recipes as r; print(r1rm.__file__); print(r.recipes_root())"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    module, root = proc.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(root) == installed / "r1rm/_recipes", proc.stdout
    listing = run_installed(installed, tmp_path, "recipes")
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines()} == set(NAMES)
    shown = run_installed(installed, tmp_path, "eval", "--recipe", "r1reward/eval_vl_rewardbench", "--print-config",
                          "model.path=my/model", "eval.path=vlrb_snapshot")
    assert shown.returncode == 0, shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    assert (cfg["model"]["path"], cfg["eval"]["path"], cfg["eval"]["benchmark"]) == ("my/model", "vlrb_snapshot", "vl-rewardbench")
    sft = yaml.safe_load(run_installed(installed, tmp_path, "sft", "--recipe", "r1reward/sft", "--print-config").stdout)
    assert sft["runtime"]["deepspeed"] == str(installed / "r1rm/_recipes/deepspeed/zero3.json")


def test_installed_wheel_runs_the_quick_start_on_a_snapshot_replica(installed, tiny, tmp_path):
    """README's quick start from outside the repository with the wheel installed: the built-in recipe by name,
    a tiny model, a local VL-RewardBench snapshot as `hf download --local-dir` lays it out, read-only."""
    from tests import replicas

    snapshot = replicas.vl_rewardbench(tmp_path / "vlrb")
    before = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*"))
    for p in [*snapshot.rglob("*"), snapshot]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    work = tmp_path / "elsewhere"
    work.mkdir()
    try:
        proc = run_installed(installed, work, "eval", "--recipe", "r1reward/eval_vl_rewardbench",
                             f"model.path={tiny}", f"eval.path={snapshot}", "output_dir=out/my_eval",
                             "generation.max_new_tokens=8", "model.dtype=float32", "runtime.report_to=none")
    finally:
        for p in [snapshot, *snapshot.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    metrics = json.loads((work / "out/my_eval/metrics.json").read_text())
    assert metrics["benchmark"] == "vl-rewardbench" and metrics["n_items"] == len(replicas.VLRB_IDS)
    assert {"chosen_first", "chosen_second"} <= set(metrics["accuracy"])
    assert sorted(metrics["accuracy"]["chosen_first"]["per_category"]) == ["general", "hallucination", "reasoning"]
    assert metrics["speedups"] == {"shared_prefill": "on"}  # Qwen2.5-VL: the engine's shared prefill applies
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")) == before
    assert any((work / "out/my_eval/media").rglob("*.png")), "embedded images go under the run's output folder"
