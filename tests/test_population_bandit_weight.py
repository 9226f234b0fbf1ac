"""program.md's persona `weight` changes how often the bandit picks a persona."""

from __future__ import annotations

import random

from population.bandit import PersonaStats, choose_persona


def _share(weights: dict[str, float] | None, draws: int = 3000) -> float:
    rng = random.Random(0)
    stats = {"a": PersonaStats(), "b": PersonaStats()}
    return sum(choose_persona(stats, rng, 0.1, weights=weights) == "a" for _ in range(draws)) / draws


def test_weight_scales_how_often_a_persona_is_picked():
    even = _share(None)
    assert 0.45 < even < 0.55
    assert _share({"a": 1.0, "b": 1.0}) == even  # equal weights draw exactly as no weights
    heavy = _share({"a": 4.0, "b": 1.0})
    light = _share({"a": 0.25, "b": 1.0})
    assert heavy > 0.75 and light < 0.25
