"""The package's shape: short functions, commands that share through lower layers, a light CLI start-up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "r1rm"
COMMANDS = PACKAGE / "commands"
MAX_FUNCTION_LINES = 120


def _modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, function-level ones and relative ones
    included; `from a import b` yields a and a.b, since b may be a module."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _command_of(module: str) -> str | None:
    """`rl` for r1rm.commands.rl and everything below it; None outside r1rm.commands' command modules."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["r1rm", "commands"] and len(parts) > 2 else None


def test_no_function_is_longer_than_a_screen_and_a_half():
    long = []
    for path in _modules(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines (split them into named phases): {long}"


def test_no_command_imports_another_command():
    crossing = []
    for path in _modules(COMMANDS):
        own = _command_of(_module_name(path))
        for line, target in _imported(path):
            other = _command_of(target)
            if other is not None and other != own:
                crossing.append(f"{path.relative_to(REPO)}:{line} imports r1rm.commands.{other}")
    assert not crossing, f"commands share code through runtime/, data/ or core/, not each other: {sorted(set(crossing))}"


def test_the_import_check_sees_every_spelling(tmp_path):
    # the check above passes vacuously if it misses a spelling: each of these is another command's import
    commands = tmp_path / "r1rm" / "commands"
    (commands / "build_data").mkdir(parents=True)
    cases = {"rl.py": {"from r1rm.commands.eval import GENERATIONS": "eval", "from r1rm.commands import vote": "vote",
                       "import r1rm.commands.sft": "sft", "from . import judge": "judge", "from .synth import run": "synth"},
             "build_data/teacher.py": {"from ..eval import read_generations": "eval", "from .. import vote": "vote"}}
    for name, spellings in cases.items():
        for text, command in spellings.items():
            (commands / name).write_text(f"def f():\n    {text}\n")
            seen = {_command_of(t) for _, t in _imported(commands / name, tmp_path)}
            assert command in seen, (name, text, seen)
    # a command's own sub-modules are its own
    (commands / "build_data" / "teacher.py").write_text("from .clean import run\nfrom r1rm.commands.build_data import clean\n")
    assert {_command_of(t) for _, t in _imported(commands / "build_data" / "teacher.py", tmp_path)} == {"build_data"}


def test_cli_start_up_does_not_import_torch():
    code = "import sys, r1rm.cli\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", "importing r1rm.cli imports torch: keep heavy imports inside the commands"
