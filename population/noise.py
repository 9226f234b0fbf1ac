"""Noise statistics: when is a child really better than its parent?

Flow: the root's runs over several seeds give the noise floor (the spread of val_bpb and
peak memory when only the seed changes), and epsilon for the archive. During a
generation each child is compared with its parent on the *same* seeds (a paired
one-sided t-test from scipy on the per-seed differences, with the variance pooled over
earlier generations' pairs once there are enough of them); racing gives promising
children more seeds, up to a limit, before a decision; at the end of the generation the
Benjamini-Hochberg procedure keeps the false-discovery rate across all of the
generation's children at `fdr`. Archive members are re-scored on fresh seeds every few
generations and fall out when their advantage no longer holds.

The seeds themselves come from here (`race_seed`, `rescore_seed`): the loop picks them,
a candidate never does.

What it does not do: run anything or keep state. Every function is pure, so the loop can
recompute every decision from the store after a restart and reach the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr  # Student t CDF; scipy.stats would cost seconds of import

# (val_bpb, peak_mem_mb) of one run
Measurement = tuple[float, float]


@dataclass(frozen=True)
class NoiseFloor:
    """Standard deviation over seeds of the root's val_bpb and peak memory."""

    val_std: float
    mem_std: float
    n_seeds: int
    val_mean: float
    mem_mean: float

    def epsilon(self, scale: float = 1.0, min_rel_mem: float = 0.01) -> tuple[float, float]:
        """Archive box sizes: `scale` noise standard deviations, never below a small
        fraction of the root's value (a noiseless objective still needs a resolution)."""
        eps_val = max(scale * self.val_std, 1e-4 * abs(self.val_mean), 1e-9)
        eps_mem = max(scale * self.mem_std, min_rel_mem * abs(self.mem_mean), 1e-6)
        return (eps_val, eps_mem)


def noise_floor(runs: list[Measurement]) -> NoiseFloor:
    if len(runs) < 2:
        raise ValueError("the noise floor needs the root measured on at least 2 seeds")
    arr = np.asarray(runs, dtype=float)
    return NoiseFloor(
        val_std=float(arr[:, 0].std(ddof=1)), mem_std=float(arr[:, 1].std(ddof=1)),
        n_seeds=len(runs), val_mean=float(arr[:, 0].mean()), mem_mean=float(arr[:, 1].mean()),
    )


@dataclass(frozen=True)
class PooledNoise:
    """Within-pair variance of child-minus-parent differences, pooled over many pairs
    (earlier generations). With it a child needs far fewer seeds for the same power
    than a t-test on its own few differences, assuming the run-to-run noise of a
    difference is about the same for every candidate."""

    var_val: float
    var_mem: float
    df: int


def pooled_noise(pairs: list[tuple[list[float], list[float]]]) -> PooledNoise | None:
    """Pool the (val, mem) differences of each pair that has at least 2 seeds."""
    ss_val = ss_mem = 0.0
    df = 0
    for d_val, d_mem in pairs:
        if len(d_val) < 2:
            continue
        v, m = np.asarray(d_val, dtype=float), np.asarray(d_mem, dtype=float)
        ss_val += float(((v - v.mean()) ** 2).sum())
        ss_mem += float(((m - m.mean()) ** 2).sum())
        df += len(v) - 1
    if df < 5:
        return None
    return PooledNoise(ss_val / df, ss_mem / df, df)


def one_sided_p(diffs: np.ndarray, pooled_var: float | None = None, pooled_df: int = 0) -> float:
    """p-value of H0 "mean difference >= 0" against H1 "< 0" (paired t-test on the
    differences). With `pooled_var` the variance comes from the pool (df `pooled_df`),
    unless the differences themselves (3 or more) spread more. With no spread at all the
    answer is exact: 0 when all differences are negative, 1 otherwise."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) == 0:
        return 1.0
    if pooled_var is not None and pooled_var > 0:
        n = len(diffs)
        var, df = pooled_var, pooled_df
        if n >= 3 and float(diffs.var(ddof=1)) > var:
            var, df = float(diffs.var(ddof=1)), n - 1
        t = float(diffs.mean()) / math.sqrt(var / n)
        return float(stdtr(df, t))
    if len(diffs) == 1 or np.allclose(diffs, diffs[0], rtol=0, atol=1e-12):
        return 0.0 if np.all(diffs < 0) and len(diffs) > 1 else 1.0
    # the one-sample t-test of scipy.stats.ttest_1samp(diffs, 0, alternative="less"),
    # written out because it runs thousands of times per generation (tests compare the two)
    n = len(diffs)
    sd = float(diffs.std(ddof=1))
    t = float(diffs.mean()) / (sd / math.sqrt(n))
    p = float(stdtr(n - 1, t))
    return 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class PairedResult:
    """A child against its parent on their shared seeds (differences child - parent)."""

    n: int
    mean_diff_val: float
    mean_diff_mem: float
    p_val: float  # one-sided: child's val_bpb lower
    p_mem: float  # one-sided: child's memory lower by more than the margin
    p: float  # the candidate's p-value: better on at least one objective
    mem_margin: float = 0.0
    informative: bool = True  # False: one seed and no pooled variance, p says nothing yet

    def looks_better(self) -> bool:
        """Worth more seeds: its mean is better on one objective (memory by more than
        the margin)."""
        return self.n > 0 and (self.mean_diff_val < 0 or self.mean_diff_mem < -self.mem_margin)


def paired_comparison(
    child: Mapping[int, Measurement], parent: Mapping[int, Measurement],
    eps: tuple[float, float], mem_margin: float = 0.0, pooled: PooledNoise | None = None,
) -> PairedResult:
    """Compare on the seeds both were measured on. `p` is the evidence that the child
    is better on at least one objective (the two one-sided p-values with a Bonferroni
    factor of 2); a memory gain must exceed `mem_margin`. Whether a child that is worse
    on the other objective is still worth keeping is the archive's question (it must be
    epsilon-non-dominated there)."""
    seeds = sorted(set(child) & set(parent))
    if not seeds:
        return PairedResult(0, math.nan, math.nan, 1.0, 1.0, 1.0)
    c = np.asarray([child[s] for s in seeds], dtype=float)
    q = np.asarray([parent[s] for s in seeds], dtype=float)
    d_val = c[:, 0] - q[:, 0]
    d_mem = c[:, 1] - q[:, 1]
    if pooled is None:
        p_val = one_sided_p(d_val)
        p_mem = one_sided_p(d_mem + mem_margin)
    else:
        p_val = one_sided_p(d_val, pooled.var_val, pooled.df)
        p_mem = one_sided_p(d_mem + mem_margin, pooled.var_mem, pooled.df)
    m_val, m_mem = float(d_val.mean()), float(d_mem.mean())
    p = min(1.0, 2.0 * min(p_val, p_mem))
    return PairedResult(len(seeds), m_val, m_mem, p_val, p_mem, p, mem_margin,
                        informative=pooled is not None or len(seeds) >= 2)


def benjamini_hochberg(pvalues: Mapping[str, float], q: float) -> set[str]:
    """The ids whose null hypotheses are rejected at false-discovery rate `q`."""
    if not pvalues:
        return set()
    items = sorted(pvalues.items(), key=lambda kv: (kv[1], kv[0]))
    m = len(items)
    k = 0
    for i, (_, p) in enumerate(items, start=1):
        if p <= q * i / m:
            k = i
    return {cid for cid, _ in items[:k]}


@dataclass(frozen=True)
class RacePolicy:
    """How many seeds a child gets: `initial` first; while it still looks better and is
    not yet clearly significant, `per_round` more, up to `max_seeds`."""

    initial: int = 1
    per_round: int = 1
    max_seeds: int = 4
    stop_p: float = 0.01  # clearly significant already: no more seeds
    continue_p: float = 1.0  # futility: stop once p is above this (when p is informative)

    def next_count(self, n_done: int, result: PairedResult) -> int:
        """The number of seeds the child should have, given its comparison so far over
        `n_done` seeds. Returns `n_done` when racing is over."""
        if n_done < self.initial:
            return self.initial
        if n_done >= self.max_seeds or not result.looks_better() or result.p <= self.stop_p:
            return n_done
        if result.informative and result.p > self.continue_p:
            return n_done
        return min(self.max_seeds, n_done + self.per_round)


def race_seed(k: int) -> int:
    """The k-th seed of the shared sequence used for roots, children and pairing."""
    return k


RESCORE_BASE = 100_000


def rescore_seed(generation: int, j: int, per_round: int) -> int:
    """Fresh seeds for re-scoring archive members, disjoint from the racing sequence."""
    return RESCORE_BASE + generation * per_round + j
