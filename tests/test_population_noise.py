"""Noise statistics: the floor, paired comparisons, FDR, racing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from population.noise import (
    PairedResult,
    RacePolicy,
    benjamini_hochberg,
    noise_floor,
    one_sided_p,
    paired_comparison,
    race_seed,
    rescore_seed,
)


def test_noise_floor_is_the_spread_over_root_seeds():
    f = noise_floor([(1.00, 100.0), (1.02, 101.0), (0.98, 99.0)])
    assert f.val_std == pytest.approx(0.02)
    assert f.mem_std == pytest.approx(1.0)
    assert f.epsilon(1.0) == (pytest.approx(0.02), pytest.approx(1.0))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        noise_floor([(1.0, 100.0)])


def test_one_sided_p_is_scipys_paired_t_test():
    for diffs in ([-0.1, 0.05, -0.02], [0.01, 0.02], [-0.01, -0.03, -0.02, 0.001]):
        assert one_sided_p(np.array(diffs)) == pytest.approx(
            stats.ttest_1samp(diffs, 0.0, alternative="less").pvalue)
    assert one_sided_p(np.array([-0.5])) == 1.0  # one run proves nothing
    assert one_sided_p(np.array([-1.0, -1.0])) == 0.0  # no spread, all better
    assert one_sided_p(np.array([0.0, 0.0])) == 1.0


def test_pairing_cancels_shared_seed_luck():
    # seed luck (sd 0.05) dwarfs the real gain (0.01); the paired test still sees it
    rng = random.Random(0)
    luck = {s: rng.gauss(0, 0.05) for s in range(6)}
    parent = {s: (1.00 + luck[s] + rng.gauss(0, 0.002), 100.0) for s in range(6)}
    child = {s: (0.99 + luck[s] + rng.gauss(0, 0.002), 100.0) for s in range(6)}
    res = paired_comparison(child, parent, eps=(0.01, 1.0))
    assert res.n == 6 and res.p_val < 0.01 and res.p < 0.02
    unpaired = stats.ttest_ind([v for v, _ in child.values()], [v for v, _ in parent.values()],
                               alternative="less").pvalue
    assert unpaired > 0.3


def test_paired_comparison_uses_only_shared_seeds_and_memory_needs_a_margin():
    parent = {0: (1.0, 100.0), 1: (1.0, 100.0), 7: (0.5, 10.0)}
    child = {0: (1.0, 99.9), 1: (1.0, 99.8), 9: (0.1, 1.0)}
    res = paired_comparison(child, parent, eps=(0.01, 1.0), mem_margin=0.5)
    assert res.n == 2
    assert res.p_mem > 0.5  # 0.15 MB saved is under the margin
    assert paired_comparison(child, parent, eps=(0.01, 1.0), mem_margin=0.0).p_mem < 0.2
    assert paired_comparison({}, parent, eps=(0.01, 1.0)).p == 1.0


def test_benjamini_hochberg_known_example():
    p = {"a": 0.001, "b": 0.008, "c": 0.039, "d": 0.041, "e": 0.042, "f": 0.06, "g": 0.074,
         "h": 0.205, "i": 0.212, "j": 0.216}
    # thresholds 0.05 * i / 10: a, b pass (0.005, 0.010); c 0.039 > 0.015 ... e 0.042 > 0.025
    assert benjamini_hochberg(p, 0.05) == {"a", "b"}
    # q 0.09: thresholds 0.009 * i; e (0.042 <= 0.045) passes, so c and d come with it
    assert benjamini_hochberg(p, 0.09) == {"a", "b", "c", "d", "e"}
    assert benjamini_hochberg({}, 0.1) == set()


def test_race_policy_adds_seeds_only_while_the_child_looks_better():
    race = RacePolicy(initial=2, per_round=2, max_seeds=6, stop_p=0.01)
    promising = PairedResult(2, -0.01, 0.0, 0.2, 1.0, 0.4)
    hopeless = PairedResult(2, +0.02, +5.0, 0.9, 1.0, 1.0)
    clear = PairedResult(4, -0.05, 0.0, 0.001, 1.0, 0.002)
    assert race.next_count(0, promising) == 2
    assert race.next_count(2, promising) == 4
    assert race.next_count(6, promising) == 6  # the limit
    assert race.next_count(2, hopeless) == 2
    assert race.next_count(4, clear) == 4


def test_the_loop_chooses_seeds_from_disjoint_sequences():
    racing = {race_seed(k) for k in range(50)}
    rescoring = {rescore_seed(g, j, 2) for g in range(30) for j in range(2)}
    assert not racing & rescoring
    assert len(rescoring) == 60


def test_race_futility_stops_children_whose_p_is_already_hopeless():
    race = RacePolicy(initial=1, per_round=1, max_seeds=4, stop_p=0.01, continue_p=0.5)
    weak = PairedResult(2, -0.001, 0.0, 0.45, 1.0, 0.9)
    uninformed = PairedResult(1, -0.001, 0.0, 1.0, 1.0, 1.0, informative=False)
    assert race.next_count(2, weak) == 2  # p 0.9 > 0.5: stop
    assert race.next_count(1, uninformed) == 2  # one seed, no pooled variance: keep going
    assert RacePolicy(initial=1, max_seeds=4).next_count(2, weak) == 3  # default: no futility rule
