"""Noise statistics: the floor, the pooled pair noise, the empirical-Bayes posterior, seeds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import integrate, stats

from population.noise import (
    K0,
    NU,
    Prior,
    fit_prior,
    noise_floor,
    one_sided_p,
    pair_noise_var,
    posterior,
    rescore_seed,
    root_seed,
    round_seed,
)


def test_noise_floor_is_the_spread_over_root_seeds():
    f = noise_floor([(1.00, 100.0), (1.02, 101.0), (0.98, 99.0)])
    assert f.val_std == pytest.approx(0.02)
    assert f.mem_std == pytest.approx(1.0)
    assert f.epsilon(1.0) == (pytest.approx(0.02), pytest.approx(1.0))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        noise_floor([(1.0, 100.0)])


def test_one_sided_p_is_scipys_paired_t_test_with_a_margin():
    for diffs in ([-0.1, 0.05, -0.02], [0.01, 0.02], [-0.01, -0.03, -0.02, 0.001]):
        assert one_sided_p(diffs) == pytest.approx(stats.ttest_1samp(diffs, 0.0, alternative="less").pvalue)
    assert one_sided_p([-0.5]) == 1.0  # one run proves nothing
    assert one_sided_p([-1.0, -1.0]) == 0.0  # no spread, all better
    assert one_sided_p([0.0, 0.0]) == 1.0
    assert one_sided_p([-0.15, -0.2], margin=0.5) > 0.9  # a saving under the margin does not count


def test_pooled_pair_noise_is_robust_to_one_spike():
    rng = random.Random(0)
    series = [[rng.gauss(0.0, 0.02) for _ in range(3)] for _ in range(40)]
    clean = pair_noise_var(series)
    assert math.sqrt(clean) == pytest.approx(0.02, rel=0.25)
    series[0][1] += 5.0  # one run hit by a load spike
    assert math.sqrt(pair_noise_var(series)) == pytest.approx(math.sqrt(clean), rel=0.1)
    assert pair_noise_var([[0.1], [0.2, 0.3]]) is None  # too few terms


def test_the_prior_is_fitted_to_first_differences_and_never_presumes_a_gain():
    rng = random.Random(1)
    gains = [rng.gauss(0.01, 0.03) for _ in range(2000)]
    first = [g + rng.gauss(0.0, 0.02) for g in gains]
    prior = fit_prior(first, 0.02**2)
    # location: the median; scale: the gains' half interquartile range (0.674 sd), noise taken out
    assert prior.mean == pytest.approx(0.01, abs=0.004) and prior.scale == pytest.approx(0.674 * 0.03, rel=0.2)
    assert fit_prior([-0.05] * 10, 0.02**2).mean == 0.0  # mostly-better children: location clipped at 0
    weak = fit_prior([0.1], 0.02**2)
    assert (weak.mean, weak.scale, weak.n) == (0.0, pytest.approx(0.04), 0)


def test_a_large_real_gain_is_not_shrunk_away_by_a_narrow_prior():
    prior = Prior(0.01, 0.015, 50)  # most children do about nothing
    big = posterior([-0.153], prior, 0.031**2)
    assert big.p_no_gain < 0.2 and big.mean < -0.1


def test_posterior_matches_numerical_integration():
    prior = Prior(0.005, 0.02, 50)
    diffs = [-0.03, -0.01, -0.025]
    pair_var = 0.015**2
    post = posterior(diffs, prior, pair_var)
    d = np.asarray(diffs)  # all within 3 pair-noise sd of their median: nothing winsorized
    var = (K0 * pair_var + ((d - d.mean()) ** 2).sum()) / (K0 + 2)
    scale = math.sqrt(var * (NU - 2) / NU)

    def density(x):
        return stats.cauchy.pdf(x, prior.mean, prior.scale) * np.prod(stats.t.pdf((d - x) / scale, NU))

    total = integrate.quad(density, -1, 1, points=[0.0], limit=200)[0]
    p0 = integrate.quad(density, 0, 1, limit=200)[0] / total
    mean = integrate.quad(lambda x: x * density(x), -1, 1, points=[0.0], limit=200)[0] / total
    assert post.p_no_gain == pytest.approx(p0, abs=2e-3)
    assert post.mean == pytest.approx(mean, abs=2e-4)
    assert post.n == 3 and post.mean_diff == pytest.approx(d.mean())


def test_a_heavy_tailed_outlier_does_not_decide_and_the_posterior_shrinks():
    prior = Prior(0.0, 0.01, 100)
    calm = posterior([-0.01, -0.012], prior, 0.01**2)
    spiked = posterior([-0.01, -0.012, 0.5], prior, 0.01**2)  # one run hit by a spike
    assert calm.p_no_gain < spiked.p_no_gain < 0.5  # the t likelihood discounts the spike
    lucky = posterior([-0.05, -0.05], prior, 0.02**2)
    assert -0.05 < lucky.mean < 0  # shrunk towards the prior: no winner's curse


@pytest.mark.slow
def test_posterior_false_acceptance_under_optional_stopping_stays_near_the_threshold():
    """Children with no gain, drawn from the prior the posterior uses, raced with
    futility stopping: the share wrongly accepted stays below the threshold."""
    rng = np.random.default_rng(5)
    prior = Prior(0.01, 0.02, 100)
    sd = 0.02
    accepted_null = accepted = nulls = 0
    for _ in range(5000):
        delta = prior.mean + prior.scale * rng.standard_cauchy()
        diffs = []
        for _n in range(4):
            diffs.append(delta + sd * math.sqrt((NU - 2) / NU) * rng.standard_t(NU))
            post = posterior(diffs, prior, sd**2)
            if len(diffs) >= 2 and post.p_no_gain <= 0.02:
                accepted += 1
                accepted_null += delta >= 0
                break
            if post.p_no_gain > 0.5:
                break
        nulls += delta >= 0
    assert accepted > 100
    assert accepted_null / accepted <= 0.02 * 1.25  # posterior error rate among acceptances
    assert accepted_null / nulls <= 0.005  # the benchmark's false acceptance


def test_seeds_are_fresh_for_every_child_round_and_disjoint():
    racing = {round_seed(g, i, r) for g in range(1, 30) for i in range(50) for r in range(10)}
    rescoring = {rescore_seed(g, k, j) for g in range(1, 30) for k in range(50) for j in range(10)}
    roots = {root_seed(k) for k in range(5)}
    assert not racing & rescoring and not racing & roots and not rescoring & roots
    assert len(racing) == 29 * 500 and len(rescoring) == 29 * 500
    with pytest.raises(ValueError, match="seed plan"):
        round_seed(1, 50, 0)
    with pytest.raises(ValueError, match="seed plan"):
        rescore_seed(1, 0, 10)
