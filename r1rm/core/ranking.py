"""Aggregating pairwise verdicts over N candidates into a ranking (best-of-N selection).

Pure functions over win matrices: `wins[i][j]` = how often candidate i was judged better
than candidate j (over both orders of every pair).
"""

from __future__ import annotations

import math


def win_rates(wins: list[list[float]]) -> list[float | None]:
    """Share of decided comparisons each candidate won; None for a candidate never compared."""
    n = len(wins)
    out: list[float | None] = []
    for i in range(n):
        won = sum(wins[i][j] for j in range(n) if j != i)
        total = won + sum(wins[j][i] for j in range(n) if j != i)
        out.append(won / total if total else None)
    return out


def bradley_terry(wins: list[list[float]], *, prior: float = 0.5, iters: int = 500, tol: float = 1e-10) -> list[float]:
    """Bradley–Terry log-strengths by the MM algorithm (Hunter 2004), centred to mean 0.

    `prior` adds that many pseudo-wins each way to every pair, so a candidate that won
    (or lost) everything gets a finite strength.
    """
    n = len(wins)
    if n == 0:
        return []
    w = [[(wins[i][j] + prior) if i != j else 0.0 for j in range(n)] for i in range(n)]
    p = [1.0] * n
    for _ in range(iters):
        new = []
        for i in range(n):
            num = sum(w[i][j] for j in range(n) if j != i)
            den = sum((w[i][j] + w[j][i]) / (p[i] + p[j]) for j in range(n) if j != i)
            new.append(num / den if den else p[i])
        gm = math.exp(sum(math.log(x) for x in new) / n)
        new = [x / gm for x in new]
        delta = max(abs(a - b) for a, b in zip(new, p, strict=True))
        p = new
        if delta < tol:
            break
    logs = [math.log(x) for x in p]
    mean = sum(logs) / n
    return [x - mean for x in logs]


def rank(scores: list[float | None]) -> list[int]:
    """Candidate indices from best to worst (None last; ties keep input order)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0)))


def pick_best(wins: list[list[float]], strength: list[float], *, tol: float = 1e-9) -> tuple[int | None, str | None]:
    """(best candidate, None), or (None, why) when the verdicts name no best: "undecided" when no
    comparison was decided, "tie" when the top Bradley–Terry strengths are equal within `tol`."""
    if not any(wins[i][j] for i in range(len(wins)) for j in range(len(wins)) if i != j):
        return None, "undecided"
    order = rank(strength)
    if len(order) > 1 and abs(strength[order[0]] - strength[order[1]]) <= tol:
        return None, "tie"
    return order[0], None


def count_win(wins: list[list[float]], i: int, j: int, choice: int | None) -> bool:
    """Add one verdict on the pair (candidate i shown as response 1, j as response 2) to `wins`:
    choice 1 is a win of i over j, 2 one of j over i; False (nothing added) for an undecided verdict."""
    if choice == 1:
        wins[i][j] += 1
    elif choice == 2:
        wins[j][i] += 1
    else:
        return False
    return True


def ranking_summary(wins: list[list[float]]) -> dict:
    """Per-candidate win rate and Bradley–Terry strength, the ranking (best first) and the best candidate
    with the reason there is none (`pick_best`): what `r1rm judge` and `POST /v1/rank` report."""
    rates = win_rates(wins)
    strength = bradley_terry(wins)
    best, why = pick_best(wins, strength)
    return {"scores": [{"candidate": i, "win_rate": rates[i], "strength": strength[i]} for i in range(len(wins))],
            "ranking": rank(strength), "best": best, "best_reason": why, "wins": wins}
