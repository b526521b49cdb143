"""The `r1rm` command line: a thin shell over r1rm.commands.

Start-up imports only typer and rich; each command imports what it needs when it runs,
so `r1rm --help` stays fast (no torch). User mistakes (R1RMError) are printed without a
traceback and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="r1rm",
    help="Train and evaluate generative multimodal reward models (R1-Reward / StableReinforce, MSRL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

RecipeOpt = Annotated[
    Path | None, typer.Option("--recipe", "-r", help="YAML recipe (see recipes/).", show_default=False)
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, values parsed as YAML: rl.lr=1e-6 eval.orders=[chosen_first]", show_default=False),
]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]


def _resolve(recipe: Path | None, overrides: list[str] | None, print_config: bool):
    """Load + validate the config; with --print-config print it and exit 0."""
    from r1rm.config import config_to_yaml, load_config

    cfg = load_config(recipe, overrides or [])
    if print_config:
        sys.stdout.write(config_to_yaml(cfg))
        raise typer.Exit(0)
    return cfg


def _recipe_command(name: str, help_text: str) -> None:
    """Register `r1rm NAME [--recipe FILE] [OVERRIDES]...`: resolve the config, then run
    r1rm.commands.<NAME>, imported only when the command runs."""

    def command(recipe: RecipeOpt = None, overrides: OverridesArg = None, print_config: PrintConfigOpt = False) -> None:
        cfg = _resolve(recipe, overrides, print_config)
        importlib.import_module(f"r1rm.commands.{name.replace('-', '_')}").run(cfg)

    app.command(name, help=help_text)(command)


@app.command("tiny-model")
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Seed for weights and tokenizer.")] = 0,
    arch: Annotated[str, typer.Option(help="qwen2_5_vl or qwen2_vl.")] = "qwen2_5_vl",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Load it back and generate once.")] = True,
    heads: Annotated[int, typer.Option(help="Text attention heads (KV heads: half); the width stays 128.")] = 4,
) -> None:
    """Write a tiny randomly initialised Qwen-VL-shaped checkpoint with a locally trained tokenizer (offline)."""
    from r1rm.commands import tiny_model as cmd

    cmd.run(out_dir, seed=seed, arch=arch, check=check, heads=heads)


_recipe_command("synth", "Generate the synthetic preference task (train + held-out sets) in image, caption or text modality.")
_recipe_command("sft", "Long-CoT supervised fine-tuning (cold start, MSRL stage 1, CMKD) on one process or many, DeepSpeed ZeRO-2/3.")
_recipe_command("rl", "RL of a generative reward model: StableReinforce (default), REINFORCE++, GRPO, RLOO, REINFORCE+baseline.")


@app.command("judge")
def judge(
    recipe: RecipeOpt = None,
    overrides: OverridesArg = None,
    print_config: PrintConfigOpt = False,
    serve: Annotated[bool, typer.Option("--serve", help="Run an OpenAI-compatible server over the model instead.")] = False,
) -> None:
    """Judge pairs (both orders) or rank N candidates from judge.input; or --serve an OpenAI-compatible endpoint."""
    cfg = _resolve(recipe, overrides, print_config)
    from r1rm.commands import judge as cmd

    cmd.serve(cfg) if serve else cmd.run(cfg)


@app.command("eval")
def eval_(
    recipe: RecipeOpt = None,
    overrides: OverridesArg = None,
    print_config: PrintConfigOpt = False,
    from_generations: Annotated[
        Path | None, typer.Option("--from-generations", help="Recompute metrics from a generations.jsonl; no model.")
    ] = None,
) -> None:
    """Score a reward model on VL-RewardBench, Multimodal RewardBench, MM-RLHF-RewardBench or canonical pairs, both orders."""
    cfg = _resolve(recipe, overrides, print_config)
    from r1rm.commands import eval as cmd

    cmd.run(cfg, from_generations=from_generations)


_recipe_command("build-data", "Build SFT / RL preference data: clean + balance + shard sources; teacher cold start, MSRL captions, CMKD.")
_recipe_command("vote", "Test-time scaling from K samples: majority, any, confidence-weighted and early-stop voting vs k.")


@app.command("check-data")
def check_data(
    files: Annotated[list[Path], typer.Argument(help="Canonical JSONL files (or build-data output folders) to validate.")],
    image_root: Annotated[Path | None, typer.Option(help="Folder media paths resolve against (default: each file's folder).")] = None,
    check_media: Annotated[bool, typer.Option("--check-media/--no-check-media", help="Open every image and frame.")] = True,
    rejects: Annotated[Path | None, typer.Option(help="Write bad lines with file:line and reason to this JSONL.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images above 64x this many pixels (decompression-bomb guard).")] = 501760,
) -> None:
    """Validate canonical JSONL files: every line, every media file; exit 2 if any line is bad."""
    from r1rm.commands import check_data as cmd

    cmd.run(files, image_root=image_root, check_media=check_media, rejects_path=rejects, max_pixels=max_pixels)


@app.command("config-schema")
def config_schema() -> None:
    """List every config key with its type, default and help."""
    from r1rm.config import schema_rows

    for key, typ, default, help_text in schema_rows():
        sys.stdout.write(f"{key}\t{typ}\t{default}\t{help_text}\n")


def main() -> None:
    from r1rm.errors import EXIT_USER_ERROR, R1RMError

    try:
        app()
    except R1RMError as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(e.render())}")
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
