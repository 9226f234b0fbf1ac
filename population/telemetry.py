"""Training telemetry: how the parent actually trained, for the next proposal's prompt.

Flow: a candidate's run log (written by the arena) holds the progress lines that
train_template.py prints every few percent of the budget, in one fixed shape
(autoresearch-like; docs/contracts.md):

    step 120 (25.0%) | loss: 2.3456 | tok/sec: 16000 | remaining: 45s

`parse_progress` reads them; `candidate_telemetry` combines them, over the candidate's
finished runs in the store, with what the arena measured from outside (peak memory,
the training process's wall time, the whole run's wall time) into a `Telemetry`;
`render` writes the few lines a proposer sees. The loss curve, steps and tokens/s are
the candidate's own figures and are labelled as claims; peak memory and the times are
the arena's.

What it does not do: judge a candidate (scores come from population.scoring), or
trust any figure the candidate printed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from arena.progress import ProgressPoint, loss_at, parse_progress, read_log
from population.store import Store

__all__ = ["CURVE_FRACTIONS", "ProgressPoint", "Telemetry", "candidate_telemetry", "loss_at", "parse_progress",
           "render"]

CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Telemetry:
    """One candidate's runs, summarised. Means over its finished successful runs."""

    candidate_id: str
    n_runs: int
    curve: tuple[tuple[float, float], ...]  # (budget fraction, claimed loss), mean over runs
    steps: float | None  # claimed
    tokens_per_s: float | None  # claimed
    peak_mem_mb: float | None  # measured by the arena
    train_wall_s: float | None  # measured: the training process, start-up included
    eval_wall_s: float | None  # measured: the rest of the run (trusted evaluation)
    budget_s: float | None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def candidate_telemetry(store: Store, candidate_id: str, budget_s: float | None = None,
                        read_log: Callable[[str], str] = read_log, as_of: int | None = None) -> Telemetry | None:
    """The telemetry of a candidate's finished successful runs, or None when it has none.
    `as_of`: only runs of generations up to that archive version (all of them finished
    when it was recorded), so a resumed run reads the same; None: every run so far."""
    sql = ("SELECT log_path, peak_mem_mb, training_seconds, wall_seconds, claimed FROM evaluations "
           "WHERE candidate_id = ? AND status = 'evaluated'")
    params: list = [candidate_id]
    if as_of is not None:
        sql += " AND generation <= ?"
        params.append(as_of)
    rows = list(store.db.query(sql + " ORDER BY id", params))
    if not rows:
        return None
    curves: dict[float, list[float]] = {f: [] for f in CURVE_FRACTIONS}
    steps, tps = [], []
    for r in rows:
        points = parse_progress(read_log(r["log_path"])) if r["log_path"] else []
        for f in CURVE_FRACTIONS:
            loss = loss_at(points, f)
            if loss is not None:
                curves[f].append(loss)
        try:
            claimed = json.loads(r["claimed"] or "{}")
        except ValueError:
            claimed = {}
        claimed = claimed if isinstance(claimed, dict) else {}
        s, t = claimed.get("num_steps"), claimed.get("tokens_per_second")
        if isinstance(s, (int, float)):
            steps.append(float(s))
        elif points:
            steps.append(float(points[-1].step))
        if isinstance(t, (int, float)):
            tps.append(float(t))
        elif points:
            tps.append(points[-1].tokens_per_s)
    train_wall = _mean([r["training_seconds"] for r in rows if r["training_seconds"] is not None])
    evals = [r["wall_seconds"] - r["training_seconds"] for r in rows
             if r["wall_seconds"] is not None and r["training_seconds"] is not None]
    curve = tuple((f, m) for f in CURVE_FRACTIONS if (m := _mean(curves[f])) is not None)
    return Telemetry(candidate_id, len(rows), curve, _mean(steps), _mean(tps),
                     _mean([r["peak_mem_mb"] for r in rows if r["peak_mem_mb"] is not None]),
                     train_wall, _mean(evals), budget_s)


STILL_LEARNING = 0.05  # relative loss drop over the last quarter of the budget that counts as budget-bound


def late_drop(t: Telemetry) -> float | None:
    """How much the claimed loss fell over the last quarter of the budget, relative to
    its value at 75% (None without both points)."""
    curve = dict(t.curve)
    a, b = curve.get(0.75), curve.get(1.0)
    return (a - b) / a if a and b is not None and a > 0 else None


def render(t: Telemetry) -> str:
    """A few lines for the prompt; claims and measurements said apart. A parent whose loss
    still falls steeply at the end of its budget gets a line saying so in plain words
    (small models do not read that off the curve)."""
    lines = [f"Parent {t.candidate_id}, over {t.n_runs} run(s):"]
    if t.curve:
        pts = ", ".join(f"{int(f * 100)}%: {loss:.3f}" for f, loss in t.curve)
        lines.append(f"- training loss at budget fractions (claimed by train.py): {pts}")
        drop = late_drop(t)
        if drop is not None and drop >= STILL_LEARNING:
            lines.append(f"- the loss still fell {drop:.0%} over the last quarter of the budget: training is far "
                         "from converged, so within this budget more steps (a cheaper step) or faster learning "
                         "is likelier to help than a larger model")
    claims = []
    if t.steps is not None:
        claims.append(f"{t.steps:.0f} steps")
    if t.tokens_per_s is not None:
        claims.append(f"{t.tokens_per_s:,.0f} tokens/s")
    if claims:
        lines.append(f"- throughput (claimed by train.py): {', '.join(claims)}")
    if t.peak_mem_mb is not None:
        lines.append(f"- peak memory (measured by the arena): {t.peak_mem_mb:.0f} MB")
    if t.train_wall_s is not None:
        where = f"- time (measured): training process {t.train_wall_s:.0f} s"
        if t.budget_s is not None:
            where += f" (budget {t.budget_s:g} s; the rest is start-up, data and warm-up)"
        if t.eval_wall_s is not None:
            where += f", trusted evaluation {t.eval_wall_s:.0f} s"
        lines.append(where)
    return "\n".join(lines)
