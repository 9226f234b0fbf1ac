"""The archive: epsilon-dominance, exact hypervolume, crowding, constraints."""

from __future__ import annotations

import math
import random

import pytest

from population.archive import (
    Constraints,
    ParetoArchive,
    Point,
    crowding_distance,
    dominates,
    epsilon_front,
    hypervolume,
    hypervolume_contributions,
)


def P(cid: str, v: float, m: float) -> Point:
    return Point(cid, v, m)


def test_dominance():
    assert dominates((1.0, 1.0), (1.0, 2.0))
    assert not dominates((1.0, 2.0), (2.0, 1.0))
    assert not dominates((1.0, 1.0), (1.0, 1.0))


def test_hypervolume_matches_a_hand_computed_staircase():
    pts = [P("a", 1.0, 3.0), P("b", 2.0, 2.0), P("c", 3.0, 1.0), P("dominated", 3.0, 3.0)]
    # ref (4, 4): strips 1x1 + 1x2 + 1x3 = 6
    assert hypervolume(pts, (4.0, 4.0)) == pytest.approx(6.0)
    assert hypervolume([], (4.0, 4.0)) == 0.0
    assert hypervolume([P("out", 5.0, 1.0)], (4.0, 4.0)) == 0.0
    contrib = hypervolume_contributions(pts[:3], (4.0, 4.0))
    assert contrib == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": pytest.approx(1.0)}


def test_hypervolume_agrees_with_a_grid_count():
    rng = random.Random(3)
    pts = [P(str(i), rng.uniform(0, 1), rng.uniform(0, 1)) for i in range(12)]
    n = 400
    inside = sum(
        1 for i in range(n) for j in range(n)
        if any(p.val_bpb <= (i + 0.5) / n and p.peak_mem_mb <= (j + 0.5) / n for p in pts)
    )
    assert hypervolume(pts, (1.0, 1.0)) == pytest.approx(inside / n / n, abs=5e-3)


def test_epsilon_front_merges_points_closer_than_epsilon_and_ignores_order():
    pts = [P("a", 1.000, 100.0), P("a2", 1.004, 100.5), P("b", 0.95, 150.0), P("worse", 1.2, 160.0)]
    eps = (0.01, 2.0)
    front = epsilon_front(pts, eps)
    ids = [p.candidate_id for p in front]
    assert "worse" not in ids
    assert "b" in ids
    assert len({"a", "a2"} & set(ids)) == 1  # same box: one survivor
    for _ in range(20):
        random.shuffle(pts)
        assert [p.candidate_id for p in epsilon_front(pts, eps)] == ids


def test_incremental_adds_equal_the_batch_front():
    rng = random.Random(7)
    pts = [P(f"p{i}", rng.uniform(0.9, 1.2), rng.uniform(100, 400)) for i in range(60)]
    eps, ref = (0.005, 5.0), (1.5, 500.0)
    arch = ParetoArchive(eps=eps, ref=ref)
    for p in pts:
        arch.add(p)
    batch = ParetoArchive.build(pts, eps, ref)
    assert arch.ids() == batch.ids()
    assert arch.hypervolume() == pytest.approx(batch.hypervolume())


def test_constraints_keep_infeasible_points_out():
    arch = ParetoArchive(eps=(0.01, 1.0), ref=(2.0, 1000.0), constraints=Constraints(max_peak_mem_mb=300))
    assert not arch.add(P("big", 0.8, 400.0))
    assert arch.add(P("small", 1.0, 200.0))
    assert arch.ids() == ["small"]
    assert "exceeds max_peak_mem_mb" in Constraints(max_peak_mem_mb=300).violation(P("big", 0.8, 400.0))


def test_crowding_distance_extremes_are_infinite():
    pts = [P("a", 1.0, 4.0), P("b", 2.0, 3.0), P("c", 2.5, 1.5), P("d", 4.0, 1.0)]
    d = crowding_distance(pts)
    assert math.isinf(d["a"]) and math.isinf(d["d"])
    assert 0 < d["b"] < math.inf and 0 < d["c"] < math.inf


def test_history_records_hypervolume_per_generation():
    arch = ParetoArchive(eps=(0.01, 1.0), ref=(2.0, 10.0))
    arch.add(P("a", 1.5, 5.0))
    arch.record(0)
    arch.add(P("b", 1.0, 5.0))
    arch.record(1)
    assert arch.history == [(0, pytest.approx(2.5)), (1, pytest.approx(5.0))]


def test_the_lowest_val_bpb_point_is_never_dropped_for_a_box_corner():
    eps = (0.01, 10.0)
    best = Point("best", 1.0049, 109.0)  # same val box as "lean", which sits nearer the corner
    lean = Point("lean", 1.0051, 91.0)
    arch = ParetoArchive.build([best, lean], eps, (2.0, 1000.0))
    assert set(arch.ids()) == {"best", "lean"}
    assert epsilon_front([best, lean], eps) == [lean]  # plain epsilon dominance would drop it
