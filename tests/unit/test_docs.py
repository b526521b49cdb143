"""README and docs/ stay true: every config key, every command, the fixed headings, working links.

README.md is the front door (at most 300 lines, the scoring command near the top); the reference
pages in docs/ hold the rest, and docs/results/ one dated record per experiment.
"""

import importlib.util
import re
from pathlib import Path

import pytest

from r1rm.cli import app
from r1rm.config import schema_rows

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])

# Each page's fixed headings, in the order they must appear. A scripted edit once dropped a third
# of the README; a page that loses a section fails here.
HEADINGS = {
    "README.md": [
        "# r1rm", "## Set-up: two commands", "## Score your own model", "## Train a judge", "## Commands",
        "## Config on one screen", "## The data record", "## Errors and exit codes", "## Layout", "## Tests", "## Docs",
    ],
    "docs/config.md": [
        "# Config: one schema, YAML recipes, dotted overrides", "## How a run's config is built", "## Every config key",
    ],
    "docs/data.md": [
        "## The canonical record", "## Checking a file: `r1rm check-data`",
        "## Generation pairs: two images or videos made for one prompt",
        "## The synthetic task (embedded default data)",
        "## Tiny models, fully offline", "## Data for SFT and RL: `r1rm build-data`", "### Sources (`build.sources`)",
        "### Cleaning: every row validated, nothing dropped silently", "### Outputs and the manifest",
        "### Teacher cold start and progressive difficulty (`build.mode: teacher`)", "### MSRL data stages",
    ],
    "docs/evaluation.md": [
        "## Engines (`engine.kind`)", "## `r1rm eval`: benchmarks, both orders, resumable", "### Benchmarks",
        "## `r1rm vote`: test-time scaling", "## `r1rm judge`: verdicts, rankings, a server",
        "## Prompts and output parsing",
    ],
    "docs/training.md": [
        "## The recipes: R1-Reward and MSRL end to end", "## `r1rm sft`: long-CoT supervised fine-tuning",
        "### One process, many processes, many nodes", "### Checkpoints, resume, logs",
        "## `r1rm rl`: reinforcement learning of the judge", "### The algorithms",
        "### Rewards and the consistency checker",
        "### Both orders in one batch", "### Best checkpoint", "### Stress knobs (`rl.stress.*`)",
        "## The tiny demo: `make demo`",
    ],
    "docs/serving.md": ["# Serving: `r1rm judge --serve`", "## Start it", "## What it answers"],
    "docs/benchmarks.md": ["## Speed (`make bench`)", "## GPU checks (`make gpu-check`)"],
    "docs/results/index.md": ["## Today's headline numbers", "## Every record"],
}


def _outside_code(text: str) -> list[str]:
    """The page's lines that are not inside a fenced code block."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _headings(text: str) -> list[str]:
    return [line.rstrip() for line in _outside_code(text) if re.match(r"#{1,6} ", line)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _config_table_script():
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_page_documents_every_config_key():
    page = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = [key for key, *_ in schema_rows() if f"`{key}`" not in page]
    assert not missing, f"docs/config.md lacks config keys (run `python scripts/config_table.py`): {missing}"


def test_config_table_is_what_the_generator_writes():
    script = _config_table_script()
    page = script.PAGE.read_text(encoding="utf-8")
    assert script.render(page) == page, "docs/config.md's table is out of date: run `python scripts/config_table.py`"


def test_readme_documents_every_command():
    names = [c.name for c in app.registered_commands]
    assert names
    missing = [n for n in names if f"`r1rm {n}" not in README]
    assert not missing, missing
    assert "`r1rm judge --serve`" in README


def test_readme_shows_the_two_setup_commands():
    block = README.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in block and "make test" in block


def test_readme_states_the_demo_range_the_report_prints():
    """README's demo range is scripts/demo_expected.json's, the file `make demo`'s closing lines compare
    a run against: the two cannot drift apart (issue 25: README states the measured range)."""
    import json

    want = json.loads((ROOT / "scripts" / "demo_expected.json").read_text())
    flat = " ".join(README.replace("**", "").split())

    def signed(x: float) -> str:
        return f"−{-x:g}" if x < 0 else f"+{x:g}"

    for key, said in (("after_sft", "after SFT"), ("after_rl", "after RL")):
        r = want[key]
        assert f"{said} {r['min']:g}–{r['max']:g} % (median {r['median']:g})" in flat, key
    g = want["rl_gain"]
    assert f"RL gain {signed(g['min'])} to {signed(g['max'])} points" in flat
    assert want["record"] in README


def test_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference text to docs/"
    first = next((i for i, line in enumerate(lines) if line.startswith("r1rm eval --recipe ")), None)
    assert first is not None and first < 80, "the command that scores a user's model must be within the first 80 lines"
    recipe = lines[first].split()[3]
    # a built-in recipe's name (r1rm.recipes), which works from any folder
    from r1rm.recipes import find_builtin

    assert find_builtin(recipe) is not None, recipe
    assert "torchrun" not in lines[first] and "accelerate" not in lines[first]


@pytest.mark.parametrize("name", sorted(HEADINGS))
def test_pages_keep_their_headings(name):
    headings = _headings((ROOT / name).read_text(encoding="utf-8"))
    wanted = HEADINGS[name]
    missing = [h for h in wanted if h not in headings]
    assert not missing, f"{name} lost headings: {missing}"
    positions = [headings.index(h) for h in wanted]
    assert positions == sorted(positions), f"{name}: headings out of order"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link (and image) points at an existing file, and its #anchor at a heading there."""
    broken = []
    for line in _outside_code(page.read_text(encoding="utf-8")):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(target)
            elif anchor and dest.suffix == ".md":
                if anchor not in {_slug(h) for h in _headings(dest.read_text(encoding="utf-8"))}:
                    broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_every_result_is_a_dated_record_listed_in_the_index():
    results = DOCS / "results"
    index = (results / "index.md").read_text(encoding="utf-8")
    records = sorted(p for p in results.glob("*.md") if p.name != "index.md")
    assert len(records) >= 4
    for record in records:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md", record.name), record.name
        head = "\n".join(record.read_text(encoding="utf-8").splitlines()[:25])
        assert "**Machine**" in head and "**Command" in head, f"{record.name}: say the machine and the command"
        assert f"({record.name})" in index, f"docs/results/index.md does not link {record.name}"
