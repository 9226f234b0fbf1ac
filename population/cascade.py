"""The evaluation cascade: stop a child's first round early when its training is clearly
behind its parent's control run on the same seed, and give the device time to others.

Flow: while runs are in flight the loop reads `Arena.progress()` and asks
`Cascade.check` about each child's first-round run. At the largest checkpoint
(`CHECKPOINTS`) that both the child's run and its parent's control on the same seed
have passed, x = child's claimed training loss - parent's. Whether x says anything about
the final difference y = child's val_bpb - parent's is learned from this run's own
finished pairs (both curves, kept in `claimed["progress"]`, and the trusted val_bpb):
a robust line y = a + b x (Theil-Sen slope, residual scale from the median absolute
deviation), fitted on the pairs of generations up to the archive version the child was
planned from, so the decision is a pure function of the store and of the two curves (a
resumed run decides the same). The predicted difference, with the line's predictive
variance as its noise, goes through the race's own posterior (population.noise, with
the child's prior): the child is stopped when it is behind (x > 0), the line rises
(b > 0), and P(no gain) > 1 - stop_p. A child whose peak memory, measured from outside
so far, is below its parent's by the memory margin is never stopped (it may be a memory
trade-off the archive wants).

The curves are the candidates' claims: a candidate that lies about its loss can only
keep itself from being stopped (device time), or get itself stopped; acceptance is
decided from the trusted evaluator alone (population.scoring). A child stopped early
is rejected with the reason; its and its parent's control runs are called off.

What it does not do: schedule or cancel runs (the loop does), or judge finished runs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from arena.progress import ProgressPoint, RunProgress, from_curve, loss_at
from population import noise
from population.scoring import Scorer
from population.store import Candidate, Store

CHECKPOINTS = (0.25, 0.5)  # budget fractions at which a child may be stopped
MAX_PAIRS = 400  # the most recent finished pairs a calibration uses


@dataclass(frozen=True)
class Calibration:
    """How well the training-loss difference at one checkpoint predicts the final
    val_bpb difference, over `n` finished pairs: y ~ a + b x, residual scale s."""

    fraction: float
    n: int
    a: float
    b: float
    s: float
    x_mean: float
    x_ss: float  # sum of squared deviations of x

    def predict(self, x: float) -> tuple[float, float]:
        """The predicted final difference at x and its predictive variance (residual
        scale, widened by the line's own uncertainty)."""
        lever = (x - self.x_mean) ** 2 / self.x_ss if self.x_ss > 0 else 0.0
        return self.a + self.b * x, self.s ** 2 * (1.0 + 1.0 / self.n + lever)


@dataclass(frozen=True)
class Stop:
    """A decision to stop a child's run: at which checkpoint, and why."""

    fraction: float
    reason: str


def theil_sen(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the Theil-Sen line: the median of pairwise slopes, the
    median of y - slope x; robust to a few wild points (a candidate's false claims)."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    slope = statistics.median(slopes) if slopes else 0.0
    return statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True)), slope


def fit(fraction: float, xs: list[float], ys: list[float]) -> Calibration:
    a, b = theil_sen(xs, ys)
    resid = [y - a - b * x for x, y in zip(xs, ys, strict=True)]
    med = statistics.median(resid)
    s = 1.4826 * statistics.median(abs(r - med) for r in resid)
    x_mean = statistics.fmean(xs)
    return Calibration(fraction, len(xs), a, b, max(s, 1e-9), x_mean, sum((x - x_mean) ** 2 for x in xs))


class Cascade:
    """The stopping rule of one run. `store` gives the curves of finished runs (read
    incrementally, cached); `scorer()` the pairs; settings from program.md's [cascade]."""

    def __init__(self, store: Store, stop_p: float, min_pairs: int):
        self.store = store
        self.stop_p = stop_p
        self.min_pairs = min_pairs
        self._curves: dict[tuple[str, int], list[ProgressPoint]] = {}
        self._last_id = 0
        self._fits: dict[tuple[int, float], Calibration | None] = {}

    @property
    def enabled(self) -> bool:
        return self.stop_p > 0

    def curve(self, cid: str, seed: int) -> list[ProgressPoint]:
        """The progress lines a finished successful run of `cid` on `seed` printed ([] if none)."""
        self._read_new()
        return self._curves.get((cid, seed), [])

    def _read_new(self) -> None:
        rows = self.store.db.query(
            "SELECT id, candidate_id, seed, claimed FROM evaluations WHERE status = 'evaluated' AND id > ? "
            "ORDER BY id", [self._last_id])
        for r in rows:
            self._last_id = max(self._last_id, r["id"])
            try:
                claimed = json.loads(r["claimed"] or "{}")
            except ValueError:
                continue
            points = from_curve(claimed.get("progress") if isinstance(claimed, dict) else None)
            if points:
                self._curves[(r["candidate_id"], r["seed"])] = points

    def calibration(self, scorer: Scorer, version: int, fraction: float) -> Calibration | None:
        """The fit at `fraction` from the pairs of generations 1..version (cached: a
        finished version's pairs never change); None with fewer than min_pairs."""
        key = (version, fraction)
        if key in self._fits:
            return self._fits[key]
        self._read_new()
        curves = self._curves
        xs, ys = [], []
        for c in sorted(scorer.cands.values(), key=lambda c: (c.generation, c.idx)):
            if c.parent_id is None or not 1 <= c.generation <= version:
                continue
            for seed, d_val, _d_mem in scorer.pairs(c.id, version):
                x = self.difference(curves.get((c.id, seed), []), curves.get((c.parent_id, seed), []), fraction)
                if x is not None and math.isfinite(d_val):
                    xs.append(x)
                    ys.append(d_val)
        xs, ys = xs[-MAX_PAIRS:], ys[-MAX_PAIRS:]
        cal = fit(fraction, xs, ys) if len(xs) >= self.min_pairs else None
        self._fits[key] = cal
        return cal

    @staticmethod
    def difference(child: list[ProgressPoint], parent: list[ProgressPoint], fraction: float) -> float | None:
        """Child's claimed loss minus parent's at `fraction`, when both got there."""
        if not child or not parent or child[-1].fraction < fraction or parent[-1].fraction < fraction:
            return None
        lc, lp = loss_at(child, fraction), loss_at(parent, fraction)
        if lc is None or lp is None or not (math.isfinite(lc) and math.isfinite(lp)):
            return None
        return lc - lp

    def check(self, scorer: Scorer, child: Candidate, child_run: RunProgress | None,
              parent_points: list[ProgressPoint], parent_mem_mb: float | None, mem_margin: float) -> Stop | None:
        """Stop `child`'s run now? `parent_points`/`parent_mem_mb`: its parent's control on
        the same seed (running or finished)."""
        if not self.enabled or child_run is None or child.archive_version < 1:
            return None
        if (child_run.peak_mem_mb is not None and parent_mem_mb is not None
                and child_run.peak_mem_mb < parent_mem_mb - mem_margin):
            return None
        for fraction in sorted(CHECKPOINTS, reverse=True):
            x = self.difference(child_run.points, parent_points, fraction)
            if x is None:
                continue
            cal = self.calibration(scorer, child.archive_version, fraction)
            if cal is None or x <= 0 or cal.b <= 0:
                return None
            y, var = cal.predict(x)
            post = noise.posterior((y,), scorer.model(child.archive_version).prior, var)
            if post.p_no_gain > 1.0 - self.stop_p:
                return Stop(fraction, (
                    f"stopped at {fraction:.0%} of the budget: training loss {x:+.4f} behind its parent on the "
                    f"same seed (claimed); {cal.n} finished pairs predict a val_bpb difference of {y:+.4f} "
                    f"+- {var ** 0.5:.4f}, P(no gain) {post.p_no_gain:.2f}"))
            return None
        return None
