"""`r1rm vote`: test-time scaling from a generations file with K samples per item and order.

For k = 1..K: majority voting (ties broken by total answer probability), any-correct
(Any@k), confidence-weighted voting (sum of P(choice)) and early-stop sequential voting
(stops sampling once the leader cannot be overtaken; reports the mean samples it used),
per order and pooled over both orders (METHOD §5). Writes `votes.json` and `votes.png`.
"""

from __future__ import annotations

from pathlib import Path

from r1rm.config import Config, save_config
from r1rm.data.files import atomic_path, write_json_atomic
from r1rm.errors import ConfigError

CURVES = ("majority", "any", "weighted", "early_stop")


def plot_curve(votes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [p["k"] for p in votes["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in CURVES:
        ax.plot(ks, [100 * p[name] for p in votes["curve"]], marker="o", label=name.replace("_", "-"))
    ax.set_xlabel("k (samples per item and order)")
    ax.set_ylabel("accuracy (%), pooled over both orders")
    ax.set_title("test-time scaling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def run(cfg: Config) -> dict:
    from rich.console import Console
    from rich.table import Table

    from r1rm.core.voting import vote_curve
    from r1rm.data.generations import GENERATIONS, read_generations

    out = Path(cfg.output_dir)
    save_config(cfg)
    gen = cfg.vote.generations or str(out / GENERATIONS)
    rows = read_generations(gen)
    try:
        votes = vote_curve(rows, k_max=cfg.vote.k_max)
    except ValueError as e:
        raise ConfigError(f"cannot vote over {gen}: {e}", fix="set vote.k_max to at most the samples per item (eval.k)") from None
    votes["generations"] = str(gen)
    write_json_atomic(out / "votes.json", votes)
    plot_curve(votes, out / "votes.png")
    table = Table(title=f"voting over {votes['k_max']} samples (pooled over orders)")
    for col in ("k", *CURVES, "early-stop samples"):
        table.add_column(col, justify="right")
    for p in votes["curve"]:
        table.add_row(str(p["k"]), *[f"{100 * p[c]:.2f}" for c in CURVES], f"{p['early_stop_mean_samples']:.2f}")
    Console().print(table)
    return votes
