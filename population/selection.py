"""Parent selection: which archive members get children this generation.

Flow: after a generation is finalized the loop asks for parents from the archive.
Personas that prefer the best get a Thompson draw over the members' val_bpb estimates
(depth where the evidence points). Not only the best: every member has a floor weight, extremes of the front and members with
a large crowding distance or hypervolume contribution weigh more, so the search keeps
exploring the whole memory/quality trade-off instead of collapsing onto one lineage.

What it does not do: keep state. The random draws come from a `random.Random` the loop
seeds from (run seed, generation, child index), so a resumed run picks the same parents.
"""

from __future__ import annotations

import math
import random

from population.archive import Point, crowding_distance, hypervolume_contributions


def parent_weights(members: list[Point], ref: tuple[float, float], floor: float = 0.2) -> dict[str, float]:
    """Selection weight per member: `floor` + normalized crowding distance + normalized
    hypervolume contribution. Infinite crowding (the two ends of the front) counts as the
    largest finite value, or 1 when there is none."""
    if not members:
        return {}
    crowd = crowding_distance(members)
    finite = [v for v in crowd.values() if math.isfinite(v)]
    cap = max(finite) if finite and max(finite) > 0 else 1.0
    crowd = {k: (cap if not math.isfinite(v) else v) / cap for k, v in crowd.items()}
    contrib = hypervolume_contributions(members, ref)
    top = max(contrib.values())
    contrib = {k: (v / top if top > 0 else 0.0) for k, v in contrib.items()}
    return {m.candidate_id: floor + crowd[m.candidate_id] + contrib[m.candidate_id] for m in members}


def select_parent(members: list[Point], ref: tuple[float, float], rng: random.Random,
                  floor: float = 0.2) -> Point:
    """Draw one parent in proportion to `parent_weights`."""
    if not members:
        raise ValueError("cannot select a parent from an empty archive")
    weights = parent_weights(members, ref, floor)
    ordered = sorted(members, key=lambda p: p.candidate_id)
    return rng.choices(ordered, weights=[weights[p.candidate_id] for p in ordered], k=1)[0]


def thompson_best(members: list[Point], rng: random.Random) -> Point:
    """Thompson sampling: draw each member's val_bpb from Normal(estimate, its standard
    error) and take the lowest draw, so a member that is probably the best gets most
    children and one that might be gets some."""
    ordered = sorted(members, key=lambda p: p.candidate_id)
    return min(ordered, key=lambda p: (p.val_bpb + p.val_bpb_se * rng.gauss(0.0, 1.0), p.peak_mem_mb))


def select_for(prefers: str, members: list[Point], ref: tuple[float, float], rng: random.Random,
               floor: float = 0.2, best_share: float = 0.7) -> Point:
    """A persona's preference (agents.personas: "best", "frontier", "failed"): "best"
    takes a Thompson draw for the lowest val_bpb `best_share` of the time and a diversity
    draw otherwise; anything else is a diversity draw."""
    if prefers == "best" and rng.random() < best_share:
        return thompson_best(members, rng)
    return select_parent(members, ref, rng, floor)
