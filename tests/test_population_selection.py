"""Parent selection with diversity, and the persona bandit with its floor."""

from __future__ import annotations

import random
from collections import Counter

from population.archive import Point
from population.bandit import PersonaStats, choice_probabilities, choose_persona
from population.selection import parent_weights, select_for, select_parent, thompson_best

FRONT = [Point("best", 0.90, 400.0), Point("mid", 0.95, 250.0), Point("mid2", 0.96, 240.0),
         Point("lean", 1.10, 100.0)]
REF = (1.5, 500.0)


def test_every_member_can_be_a_parent_and_the_ends_of_the_front_weigh_more():
    w = parent_weights(FRONT, REF, floor=0.2)
    assert all(v >= 0.2 for v in w.values())
    assert w["lean"] > w["mid2"] and w["best"] > w["mid2"]
    counts = Counter(select_parent(FRONT, REF, random.Random(i)).candidate_id for i in range(2000))
    assert set(counts) == {"best", "mid", "mid2", "lean"}
    assert counts["lean"] > counts["mid2"]


def test_selection_is_reproducible_from_its_seed():
    a = [select_parent(FRONT, REF, random.Random(f"0:parent:3:{i}")).candidate_id for i in range(20)]
    b = [select_parent(FRONT, REF, random.Random(f"0:parent:3:{i}")).candidate_id for i in range(20)]
    assert a == b


def test_bandit_prefers_the_persona_that_improves_and_keeps_a_floor_for_the_others():
    stats = {"good": PersonaStats(20, 10, 0.2), "bad": PersonaStats(20, 0, 0.2), "meh": PersonaStats(20, 2, 0.2)}
    probs = choice_probabilities(stats, floor=0.1)
    assert probs["good"] > 0.6
    assert probs["bad"] >= 0.08  # the floor (0.1), minus Monte Carlo error
    # a persona never tried is explored (Thompson sampling draws from a flat prior)
    fresh = choice_probabilities({**stats, "new": PersonaStats()}, floor=0.1)
    assert fresh["new"] > fresh["bad"]


def test_bandit_weighs_cost():
    stats = {"cheap": PersonaStats(20, 5, 0.0), "dear": PersonaStats(20, 5, 20 * 1.0)}
    probs = choice_probabilities(stats, floor=0.05, cost_scale_usd=0.05)
    assert probs["cheap"] > 0.8


def test_choose_persona_is_reproducible():
    stats = {"a": PersonaStats(3, 1), "b": PersonaStats(3, 2)}
    assert ([choose_persona(stats, random.Random(i)) for i in range(30)]
            == [choose_persona(stats, random.Random(i)) for i in range(30)])


def test_thompson_sampling_favours_the_probably_best_member_and_gives_the_uncertain_a_chance():
    sure = Point("sure", 0.90, 300.0, val_bpb_se=0.001)
    maybe = Point("maybe", 0.91, 300.0, val_bpb_se=0.02)
    far = Point("far", 1.10, 300.0, val_bpb_se=0.001)
    rng = random.Random(0)
    picks = [thompson_best([far, maybe, sure], rng).candidate_id for _ in range(2000)]
    assert picks.count("sure") > picks.count("maybe") > 0.15 * len(picks)
    assert "far" not in picks
    always = [select_for("best", [far, sure], (2.0, 1000.0), random.Random(k), best_share=1.0).candidate_id
              for k in range(50)]
    assert set(always) == {"sure"}
