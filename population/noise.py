"""Noise statistics: how sure are we that a child is really better than its parent?

Flow: the root's runs give the noise floor (the spread of val_bpb when only the seed
changes). Every child is measured in rounds; each round puts the child and a control run
of its parent on the same fresh seed in the same batch (common random numbers, paired in
time), so machine load and seed luck cancel in the difference d = child - parent. This
module turns those differences into a posterior for the child's true gain delta:

- prior: delta ~ Cauchy(mu0, gamma), fitted (empirical Bayes) to the first-round
  differences of earlier children (median and interquartile range, the pair noise taken
  out), with mu0 never below 0 (a change is not presumed to help). Most changes do about
  nothing and a few do a lot: the Cauchy's narrow body pulls small lucky differences
  back while its tail, heavier than the noise's, lets a large real gain through; a weak
  default before there are enough children;
- likelihood: Student t with `NU` degrees of freedom (heavy tails: one load spike does
  not decide), scale per candidate, shrunk towards the pooled pair noise
  (hierarchical: `K0` pseudo-pairs of the pool plus the child's own winsorized spread);
- the pool is robust: the median of halved squared successive differences.

The posterior probability of *no gain*, P(delta >= 0 | data), is what racing and
acceptance read. A posterior computed with the prior that generated the data does not
depend on the stopping rule (the likelihood principle), so stopping early for futility
or success is accounted for, and the posterior mean shrinks lucky children (no
winner's curse) as long as the prior fits. Memory, nearly noiseless, keeps a plain
paired t-test.

The seeds come from here too: every child's every round gets a fresh seed (its parent's
control runs on the same one), re-scoring gets its own, and a candidate never picks one.

What it does not do: run anything or keep state. Every function is pure, so the loop
can recompute every decision from the store after a restart and reach the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr  # scipy.stats would cost seconds of import

NU = 4.0  # degrees of freedom of the heavy-tailed pair noise
K0 = 5.0  # pseudo-pairs of pooled noise in a candidate's own scale
MIN_PRIOR_CHILDREN = 6  # first-round differences needed before the prior is fitted
_CHI2_1_MEDIAN = 0.454936  # median of chi-square with 1 degree of freedom


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
        return epsilon(self.val_std, self.mem_std, self.val_mean, self.mem_mean, scale, min_rel_mem)


def epsilon(val_std: float, mem_std: float, val_mean: float, mem_mean: float, scale: float = 1.0,
            min_rel_mem: float = 0.01) -> tuple[float, float]:
    eps_val = max(scale * val_std, 1e-4 * abs(val_mean), 1e-9)
    eps_mem = max(scale * mem_std, min_rel_mem * abs(mem_mean), 1e-6)
    return (eps_val, eps_mem)


def noise_floor(runs: Sequence[tuple[float, float]]) -> NoiseFloor:
    """From (val_bpb, peak_mem_mb) of the root's runs on different seeds."""
    if len(runs) < 2:
        raise ValueError("the noise floor needs the root measured on at least 2 seeds")
    arr = np.asarray(runs, dtype=float)
    return NoiseFloor(
        val_std=float(arr[:, 0].std(ddof=1)), mem_std=float(arr[:, 1].std(ddof=1)),
        n_seeds=len(runs), val_mean=float(arr[:, 0].mean()), mem_mean=float(arr[:, 1].mean()),
    )


def pair_noise_var(series: Sequence[Sequence[float]]) -> float | None:
    """Robust variance of one paired difference, pooled over candidates: each series is
    one candidate's differences in round order; the median of (d_i - d_i+1)^2 / 2 over
    all of them, scaled to a variance (heavy tails and true gains do not inflate it).
    None with fewer than 3 such terms."""
    terms = [0.5 * (s[i] - s[i + 1]) ** 2 for s in series for i in range(len(s) - 1)]
    if len(terms) < 3:
        return None
    return float(np.median(terms)) / _CHI2_1_MEDIAN


@dataclass(frozen=True)
class Prior:
    """Prior of a child's true gain (child - parent val_bpb; negative is better):
    Cauchy with this location and scale."""

    mean: float
    scale: float
    n: int  # first-round differences it was fitted to (0: the default)


def fit_prior(first_diffs: Sequence[float], pair_var: float) -> Prior:
    """Empirical Bayes: first-round differences d1 = delta + noise. Location: their
    median, never below 0; scale: half their interquartile range with the pair noise
    taken out, never below half the pair noise's sd. Before `MIN_PRIOR_CHILDREN` children:
    location 0, scale twice the pair noise's sd (weak)."""
    sd_pair = math.sqrt(pair_var)
    if len(first_diffs) < MIN_PRIOR_CHILDREN:
        return Prior(0.0, 2.0 * sd_pair, 0)
    q1, med, q3 = np.percentile(np.asarray(first_diffs, dtype=float), [25, 50, 75])
    # a normal's half-IQR is 0.674 sd: take the noise's share out of the spread
    spread = max((0.5 * (q3 - q1)) ** 2 - (0.674 * sd_pair) ** 2, 0.0)
    return Prior(max(float(med), 0.0), max(math.sqrt(spread), 0.5 * sd_pair), len(first_diffs))


@dataclass(frozen=True)
class Posterior:
    """A child's true gain given its paired differences (negative is better)."""

    n: int
    mean: float  # posterior mean of delta (shrunk towards the prior)
    sd: float
    p_no_gain: float  # P(delta >= 0 | data)
    mean_diff: float  # plain mean of the differences (for people)


def posterior(diffs: Sequence[float], prior: Prior, pair_var: float) -> Posterior:
    """Grid posterior of delta under the Cauchy prior x prod Student-t(NU) likelihood
    (the likelihood is negligible beyond 12 scales, the grid's edge). The t scale is the
    candidate's own: K0 pseudo-pairs at `pair_var` plus its own spread."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return Posterior(0, prior.mean, math.inf, 0.5 + math.atan(prior.mean / prior.scale) / math.pi, math.nan)
    # the candidate's own spread, winsorized at 3 pair-noise sd around its median so
    # one spike widens neither its scale nor (through it) its likelihood
    w = np.clip(d, np.median(d) - 3 * math.sqrt(pair_var), np.median(d) + 3 * math.sqrt(pair_var))
    own_ss = float(((w - w.mean()) ** 2).sum()) if n > 1 else 0.0
    var = (K0 * pair_var + own_ss) / (K0 + n - 1)
    scale = math.sqrt(var * (NU - 2.0) / NU)
    lo = min(prior.mean - 12 * prior.scale, float(d.min()) - 12 * scale)
    hi = max(prior.mean + 12 * prior.scale, float(d.max()) + 12 * scale)
    grid = np.linspace(lo, hi, 4001)
    u = (grid - prior.mean) / prior.scale
    logp = -np.log1p(u * u)
    z = (d[None, :] - grid[:, None]) / scale
    logp = logp - 0.5 * (NU + 1.0) * np.log1p(z * z / NU).sum(axis=1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = float((w * grid).sum())
    sd = math.sqrt(max(float((w * (grid - mean) ** 2).sum()), 0.0))
    p0 = float(w[grid >= 0].sum())
    return Posterior(n, mean, sd, min(max(p0, 0.0), 1.0), float(d.mean()))


def one_sided_p(diffs: Sequence[float], margin: float = 0.0) -> float:
    """p-value of H0 "mean difference >= -margin" against H1 "< -margin" (paired t-test).
    With no spread the answer is exact: 0 when all differences are below -margin, 1
    otherwise; one difference says nothing (1)."""
    d = np.asarray(diffs, dtype=float) + margin
    n = len(d)
    if n < 2:
        return 1.0
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return 0.0 if np.all(d < 0) else 1.0
    t = float(d.mean()) / (float(d.std(ddof=1)) / math.sqrt(n))
    p = float(stdtr(n - 1, t))
    return 1.0 if math.isnan(p) else p


# -- seeds: chosen by the loop, never by a candidate -----------------------------------------

ROUND_STRIDE = 1000  # seeds of generation g lie in [g * 1000, g * 1000 + 1000)
RESCORE_OFFSET = 500  # re-scoring seeds of generation g start at g * 1000 + 500
MAX_CHILDREN = 50  # children (or re-scored members) per generation the seed plan has room for
MAX_ROUNDS = 10  # rounds per child (seeds.max) the seed plan has room for


def root_seed(k: int) -> int:
    """The root's k-th noise-floor seed (generation 0)."""
    return k


def round_seed(generation: int, idx: int, rnd: int) -> int:
    """The seed of round `rnd` of child `idx` of generation `generation`: fresh for every
    child and round, shared by the child's run and its parent's control run."""
    if not (0 <= idx < MAX_CHILDREN and 0 <= rnd < MAX_ROUNDS):
        raise ValueError(f"child {idx} round {rnd} outside the seed plan ({MAX_CHILDREN} x {MAX_ROUNDS})")
    return generation * ROUND_STRIDE + idx * MAX_ROUNDS + rnd


def rescore_seed(generation: int, k: int, j: int) -> int:
    """Fresh seed j for re-scoring the k-th archive member in generation `generation`
    (its parent's control runs on the same seed), disjoint from the racing rounds."""
    if not (0 <= k < MAX_CHILDREN and 0 <= j < MAX_ROUNDS):
        raise ValueError(f"member {k} seed {j} outside the seed plan ({MAX_CHILDREN} x {MAX_ROUNDS})")
    return generation * ROUND_STRIDE + RESCORE_OFFSET + k * MAX_ROUNDS + j
