"""Persona choice: a bandit over each persona's measured improvement rate and cost.

Flow: when the loop plans a child it asks which persona should write it. Each persona's
record (children decided so far, how many entered the archive, what its LLM calls cost)
comes from the store as of the archive version the child sees. Thompson sampling draws an
improvement rate from Beta(successes + 1, failures + 1) and divides it by a cost factor;
with probability `floor * K` (K personas) the choice is uniform instead, so every persona
keeps at least probability `floor` and a persona that failed early can come back.

What it does not do: keep state or call anything. The loop passes a seeded
`random.Random`, so a resumed run makes the same choices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PersonaStats:
    trials: int = 0  # children decided (confirmed, rejected or failed)
    successes: int = 0  # children confirmed into the archive
    cost_usd: float = 0.0  # LLM cost of all its proposals

    @property
    def mean_cost(self) -> float:
        return self.cost_usd / self.trials if self.trials else 0.0


def choose_persona(stats: dict[str, PersonaStats], rng: random.Random, floor: float = 0.1,
                   cost_scale_usd: float = 0.05, weights: dict[str, float] | None = None) -> str:
    """Pick a persona. `stats` must name every persona (unseen ones with zero trials).
    `weights` (program.md's persona `weight`, default 1) scale both the uniform
    exploration draw and each persona's sampled utility."""
    names = sorted(stats)
    if not names:
        raise ValueError("no personas to choose from")
    w = {n: (weights or {}).get(n, 1.0) for n in names}
    floor = min(max(floor, 0.0), 1.0 / len(names))
    if rng.random() < floor * len(names):
        return rng.choices(names, [w[n] for n in names])[0] if len(set(w.values())) > 1 else rng.choice(names)
    best, best_u = names[0], -1.0
    for name in names:
        s = stats[name]
        rate = rng.betavariate(s.successes + 1, s.trials - s.successes + 1)
        utility = w[name] * rate / (1.0 + s.mean_cost / cost_scale_usd)
        if utility > best_u:
            best, best_u = name, utility
    return best


def choice_probabilities(stats: dict[str, PersonaStats], floor: float = 0.1,
                         cost_scale_usd: float = 0.05, draws: int = 2000) -> dict[str, float]:
    """Monte Carlo estimate of each persona's probability of being chosen (for reports)."""
    rng = random.Random(0)
    counts = dict.fromkeys(stats, 0)
    for _ in range(draws):
        counts[choose_persona(stats, rng, floor, cost_scale_usd)] += 1
    return {k: v / draws for k, v in counts.items()}
