"""The `r1rm` command line: a thin shell over r1rm.commands.

Start-up imports only typer and rich; each command imports what it needs when it runs,
so `r1rm --help` stays fast (no torch). User mistakes (R1RMError) are printed without a
traceback and exit with code 2; anything else is a bug and keeps its traceback.
Help texts go through rich markup: a literal `[` is written `\\[` (r1rm.cli.EXAMPLES are escaped here).
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
    epilog="Example: r1rm recipes  (the built-in recipes), then r1rm eval --recipe r1reward/eval_vl_rewardbench "
    "model.path=yifanzhang114/R1-Reward",
)

RecipeOpt = Annotated[
    str | None,
    typer.Option("--recipe", "-r", help="A YAML recipe file, or a built-in recipe's name such as r1reward/sft "
                 "(`r1rm recipes` lists them; an existing file wins).", show_default=False),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, values parsed as YAML: rl.lr=1e-6 eval.orders=\\[chosen_first]", show_default=False),
]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]


# one real command line per command, shown as the epilog of its --help
EXAMPLES = {
    "tiny-model": "r1rm tiny-model out/tiny/model",
    "synth": "r1rm synth --recipe tiny/synth output_dir=out/colour data.synthetic.n=1000",
    "sft": "r1rm sft --recipe tiny/sft model.path=out/tiny/model data.train=[out/colour/train.jsonl] output_dir=out/colour/sft",
    "rl": "r1rm rl --recipe tiny/rl model.path=out/colour/sft/model data.train=[out/colour/train.jsonl] "
          "data.eval=[out/colour/eval.jsonl] output_dir=out/colour/rl",
    "judge": "r1rm judge --recipe tiny/judge model.path=out/colour/rl/model judge.input=pairs.jsonl",
    "eval": "r1rm eval --recipe r1reward/eval_vl_rewardbench model.path=yifanzhang114/R1-Reward output_dir=out/vlrb",
    "build-data": "r1rm build-data --recipe tiny/build_text output_dir=out/msrl_text",
    "vote": "r1rm vote --recipe tiny/vote output_dir=out/demo/vote",
    "check-data": "r1rm check-data out/colour/train.jsonl --rejects out/colour/rejects.jsonl",
    "config-schema": "r1rm config-schema | grep ^eval.",
    "recipes": "r1rm recipes r1reward/sft --copy my_recipes",
}


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("r1rm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from r1rm import __version__ as v
    sys.stdout.write(f"r1rm {v}\n")
    raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print r1rm's version and exit.")
    ] = False,
) -> None:
    pass


def _resolve(recipe: str | None, overrides: list[str] | None, print_config: bool):
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
    family: Annotated[str, typer.Option(
        help="qwen2_5_vl, qwen2_vl, qwen3_vl, internvl3_5 or llava_onevision.")] = "qwen2_5_vl",
    arch: Annotated[str | None, typer.Option(hidden=True, help="Deprecated name of --family.")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Load it back and generate once.")] = True,
    heads: Annotated[int, typer.Option(help="Text attention heads (KV heads: half).")] = 4,
    width: Annotated[int, typer.Option(help="Text decoder width (hidden size; the MLP is twice as wide).")] = 128,
) -> None:
    """Write a tiny randomly initialised checkpoint of a VLM family with a locally trained tokenizer (offline)."""
    from r1rm.commands import tiny_model as cmd

    option = "--arch" if arch else "--family"
    cmd.run(out_dir, seed=seed, family=arch or family, check=check, heads=heads, width=width, option=option)


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


@app.command("recipes")
def recipes(
    name: Annotated[str | None, typer.Argument(help="A built-in recipe's name: print it.", show_default=False)] = None,
    copy: Annotated[
        Path | None,
        typer.Option("--copy", help="Copy recipe NAME and the files it inherits into this folder, to edit and run.",
                     show_default=False),
    ] = None,
) -> None:
    """List the built-in recipes with their purpose; print one; or copy one out to start from."""
    from r1rm import recipes as rc
    from r1rm.errors import ConfigError

    if name is None:
        if copy is not None:
            raise ConfigError("--copy needs the name of the recipe to copy", fix="r1rm recipes NAME --copy DEST")
        names = rc.builtin_recipes()
        if not names:
            raise ConfigError("no built-in recipes found next to the r1rm package", fix="reinstall r1rm")
        width = max(map(len, names))
        for n, path in names.items():
            sys.stdout.write(f"{n:<{width}}  {rc.purpose(path)}\n")
        return
    if copy is not None:
        files = rc.copy_builtin(name, copy)
        sys.stdout.write("".join(f"{f}\n" for f in files))
        sys.stderr.write(f"run it with: --recipe {files[0]}\n")
        return
    sys.stdout.write(rc.locate_builtin(name).read_text(encoding="utf-8"))


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


for _info in app.registered_commands:
    _example = EXAMPLES.get(_info.name or "")
    if _example and not _info.epilog:
        _info.epilog = "Example: " + _example.replace("[", "\\[")


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
