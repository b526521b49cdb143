"""`r1rm vote`: test-time scaling from a generations file with K samples per item and order.

For k = 1..K: majority voting (ties broken by total answer probability), any-correct
(Any@k), confidence-weighted voting (sum of P(choice)) and early-stop sequential voting
(stops sampling once the leader cannot be overtaken; reports the mean samples it used).
Each rule's verdicts are scored in the benchmark's own terms, as `r1rm eval` scores it
(METHOD §5: VL-RewardBench overall and macro, Multimodal RewardBench's seven-column mean,
MM-RLHF Acc and Acc+, GenAI-Bench and canonical accuracy), in each order and over both
orders, so the curve compares one to one with the papers' voting tables. The benchmark is
the one the eval run recorded next to the generations file (run.json, else metrics.json),
else `eval.benchmark`. Writes `votes.json`, `votes.md` and `votes.png`.
"""

from __future__ import annotations

from pathlib import Path

from r1rm.config import Config, save_config
from r1rm.data.files import LineError, atomic_path, loads_json, write_json_atomic, write_text_atomic
from r1rm.errors import ConfigError, DataError

CURVES = ("majority", "any", "weighted", "early_stop")
# the order blocks plotted and printed (votes.md and votes.json also hold both_orders_strict)
SHOWN_BLOCKS = ("chosen_first", "chosen_second", "both_orders_mean")
# where an eval run records its benchmark, next to its generations.jsonl
RECORDS = (("run.json", "eval.benchmark"), ("metrics.json", "benchmark"))


def eval_benchmark(cfg: Config, generations: Path) -> tuple[str, str]:
    """(benchmark, where it was read): the eval run's record next to the generations file, else
    eval.benchmark; an eval.benchmark set in the recipe or an override that contradicts the
    record is a ConfigError (the same rows scored as another benchmark would mislead)."""
    from r1rm.core.metrics import BENCHMARKS

    for name, key in RECORDS:
        path = generations.parent / name
        if not path.is_file():
            continue
        try:
            record = loads_json(path.read_bytes(), allow_nan=True)
        except LineError as e:
            raise DataError(f"the eval run's {name} is unreadable ({e.brief})", where=str(path),
                            fix=f"rerun the eval, or remove {name} and set eval.benchmark") from None
        recorded = record.get(key) if isinstance(record, dict) else None
        if recorded not in BENCHMARKS:
            continue
        if "benchmark" in cfg.eval.model_fields_set and cfg.eval.benchmark != recorded:
            raise ConfigError(
                f"eval.benchmark={cfg.eval.benchmark} but the generations were written by an eval of {recorded}",
                where=str(path), fix=f"drop the eval.benchmark setting (vote reads {recorded} from {name}) or set "
                f"eval.benchmark={recorded}",
            )
        return recorded, str(path)
    return cfg.eval.benchmark, "eval.benchmark"


def curve_figure(votes: dict):
    """The figure of votes.png: a panel per headline metric (rows) and order block (columns), a
    line per rule, integer k ticks only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    heads = votes["headline"]
    entries = votes["metrics_curve"]
    blocks = [b for b in SHOWN_BLOCKS if entries and b in entries[0][CURVES[0]]]
    ks = [e["k"] for e in entries]
    fig, axes = plt.subplots(len(heads), len(blocks), figsize=(4 * len(blocks), 3.2 * len(heads)), squeeze=False)
    for row, head in enumerate(heads):
        for col, block in enumerate(blocks):
            ax = axes[row][col]
            for name in CURVES:
                values = [e[name][block].get(head["key"]) for e in entries]
                ax.plot(ks, [float("nan") if v is None else 100 * v for v in values], marker="o",
                        label=name.replace("_", "-"))
            if len(ks) <= 16:
                ax.set_xticks(ks)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{head['label']}, {block}", fontsize=9)
            ax.set_xlabel("k (samples per item and order)")
            ax.set_ylabel(f"{head['label']} (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"test-time scaling on {votes['benchmark']}")
    fig.tight_layout()
    return fig


def plot_curve(votes: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = curve_figure(votes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def print_votes(votes: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for block in SHOWN_BLOCKS:
        if not votes["metrics_curve"] or block not in votes["metrics_curve"][0][CURVES[0]]:
            continue
        table = Table(title=f"{votes['benchmark']}: voting over {votes['k_max']} samples, {block} (%)")
        table.add_column("k", justify="right")
        for name in CURVES:
            for head in votes["headline"]:
                table.add_column(f"{name.replace('_', '-')}\n{head['label']}", justify="right")
        for e in votes["metrics_curve"]:
            cells = [e[name][block].get(h["key"]) for name in CURVES for h in votes["headline"]]
            table.add_row(str(e["k"]), *["-" if v is None else f"{100 * v:.2f}" for v in cells])
        console.print(table)
    console.print(f"benchmark from {votes['benchmark_from']}; all orders and per category in votes.json / votes.md")


def run(cfg: Config) -> dict:
    from r1rm.core.metrics import HEADLINE_METRICS
    from r1rm.core.voting import benchmark_curve, format_votes, headline_table, vote_curve
    from r1rm.data.generations import GENERATIONS, read_generations

    out = Path(cfg.output_dir)
    gen = Path(cfg.vote.generations or out / GENERATIONS)
    rows = read_generations(gen)
    benchmark, source = eval_benchmark(cfg, gen)
    try:
        plain = vote_curve(rows, k_max=cfg.vote.k_max)
        scored = benchmark_curve(rows, benchmark=benchmark, k_max=cfg.vote.k_max)
    except ValueError as e:
        fix = ("set vote.k_max to at most the samples per item (eval.k)" if "k_max" in str(e)
               else "use a generations.jsonl written by r1rm eval")
        raise ConfigError(f"cannot vote over {gen}: {e}", fix=fix) from None
    save_config(cfg)  # after the checks: a refused run writes nothing
    votes = {
        **plain,
        "generations": str(gen),
        "benchmark": benchmark,
        "benchmark_from": source,
        "headline": [{"key": key, "label": label} for key, label in HEADLINE_METRICS[benchmark]],
        "table": headline_table(scored),
        "metrics_curve": scored["curve"],
    }
    write_json_atomic(out / "votes.json", votes)
    write_text_atomic(out / "votes.md", format_votes(scored, plain, source=source))
    plot_curve(votes, out / "votes.png")
    print_votes(votes)
    from r1rm.runtime.tracking import log_vote

    log_vote(cfg, out, votes)
    return votes
