"""The built-in recipes: where they are, their names, and how `--recipe` and shipped paths resolve.

The recipes live in the repository's top-level `recipes/` folder; the wheel ships that folder as
`r1rm/_recipes` (pyproject.toml maps it there). A built-in recipe's name is its path under that
folder without `.yaml`: `r1reward/eval_vl_rewardbench`, `tiny/eval`.

Two kinds of paths appear in a recipe (docs/config.md, "Recipes and paths"):
- shipped files: `inherit:` and `runtime.deepspeed`, written relative to the recipe's own folder
  (`inherit: sft.yaml`, `deepspeed: ../deepspeed/zero3.json`), so a built-in recipe finds them
  inside the installed package wherever the command runs; the resolved config holds them as
  absolute paths.
- run paths (`output_dir`, `model.path`, data, benchmark and image paths, what an earlier stage
  wrote): left as written, so a relative one resolves against the current folder.

Standard library only: `r1rm --help` and `r1rm recipes` stay fast.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from r1rm.data.files import load_yaml
from r1rm.errors import ConfigError, InputFileError

SUFFIXES = (".yaml", ".yml")
# a --recipe value may still spell the repository path of a built-in recipe (recipes/tiny/eval.yaml)
_REPO_PREFIX = "recipes/"


def recipes_root() -> Path | None:
    """The folder of built-in recipes: r1rm/_recipes in an installed wheel, else the repository's
    recipes/ next to the r1rm package (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_recipes", here.parent / "recipes"):
        if root.is_dir():
            return root
    return None


def builtin_recipes() -> dict[str, Path]:
    """{name: file} of every built-in recipe, sorted by name."""
    root = recipes_root()
    if root is None:
        return {}
    files = [p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(files)}


def purpose(path: Path) -> str:
    """A recipe's one-line purpose: its first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def _builtin_name(text: str) -> str:
    name = text.strip().replace("\\", "/").removeprefix("./").removeprefix(_REPO_PREFIX)
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def find_builtin(text: str) -> Path | None:
    """The built-in recipe `text` names (`tiny/eval`, `tiny/eval.yaml`, `recipes/tiny/eval.yaml`), or None."""
    return builtin_recipes().get(_builtin_name(text))


def closest_names(text: str, n: int = 3) -> list[str]:
    names = list(builtin_recipes())
    name = _builtin_name(text)
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
    # a bare stem (eval_vl_rewardbench) matches its family's recipe
    close += [k for k in names if k.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1] and k not in close]
    return close[:n]


def locate_builtin(name: str) -> Path:
    """The built-in recipe `name`, or InputFileError naming the closest ones."""
    found = find_builtin(name)
    if found is None:
        close = closest_names(name)
        raise InputFileError(f"no built-in recipe named '{name}'",
                             fix=(f"closest: {', '.join(close)}; " if close else "") + "`r1rm recipes` lists them all")
    return found


def locate(text: str | Path) -> Path:
    """A `--recipe` value → the recipe file: an existing path wins, else a built-in recipe name."""
    p = Path(text)
    if p.is_file():
        return p
    found = find_builtin(str(text))
    if found is not None:
        return found
    close = closest_names(str(text))
    hint = f"closest built-in recipes: {', '.join(close)}; " if close else ""
    raise InputFileError(f"recipe not found: '{text}' is neither a file nor a built-in recipe name",
                         fix=f"{hint}`r1rm recipes` lists them all; or pass the path of a YAML file")


def resolve_shipped(value: str, recipe_dir: Path | None) -> Path | None:
    """A shipped file named in a recipe (runtime.deepspeed): absolute as given; else relative to the
    recipe's folder (a value from a recipe), the current folder, then the built-in recipes folder;
    the first that exists, absolute. None when none exists."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    root = recipes_root()
    candidates = [b / p for b in (recipe_dir, Path.cwd(), root) if b is not None]
    # the repository's spelling of a shipped file (recipes/deepspeed/zero3.json) from any folder
    if root is not None and p.parts[:1] == ("recipes",):
        candidates.append(root.joinpath(*p.parts[1:]))
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _shipped_refs(path: Path) -> list[Path]:
    """The files a recipe names relative to its own folder: its `inherit:` parents and runtime.deepspeed."""
    data = load_yaml(path.read_text(encoding="utf-8-sig"))[0] or {}
    refs: list[str] = []
    parents = data.get("inherit") if isinstance(data, dict) else None
    refs += [parents] if isinstance(parents, str) else [x for x in parents or [] if isinstance(x, str)]
    runtime = data.get("runtime") if isinstance(data, dict) else None
    ds = runtime.get("deepspeed") if isinstance(runtime, dict) else None
    if isinstance(ds, str) and not Path(ds).is_absolute():
        refs.append(ds)
    return [(path.parent / r).resolve() for r in refs if (path.parent / r).is_file()]


def closure(path: Path) -> list[Path]:
    """A recipe and every shipped file it reaches (inherit chain, DeepSpeed configs), in order."""
    seen: list[Path] = []
    todo = [path.resolve()]
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.append(p)
        if p.suffix in SUFFIXES:
            todo += _shipped_refs(p)
    return seen


def copy_builtin(name: str, dest: Path) -> list[Path]:
    """Copy built-in recipe `name` and the shipped files it reaches into folder `dest`, keeping their
    layout under the recipes folder, so its relative `inherit:` / DeepSpeed paths still resolve.
    Returns the written files (the recipe first). Refuses to overwrite an existing file."""
    src = locate_builtin(name)
    files = closure(src)
    root = recipes_root().resolve()
    targets = [dest / f.relative_to(root) for f in files]
    clash = [str(t) for t in targets if t.exists()]
    if clash:
        raise ConfigError(f"refusing to overwrite {', '.join(clash)}", fix="copy into an empty folder or remove those files")
    for f, t in zip(files, targets, strict=True):
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, t)
    return targets
