"""The Pareto archive: which measured candidates survive, on two objectives at once.

Flow: at the end of each generation the loop hands this module the candidates the
statistics confirmed (with their mean val_bpb and peak memory over seeds) and gets back
the archive -- the epsilon-non-dominated, feasible set -- plus its exact hypervolume,
each member's crowding distance and hypervolume contribution (selection uses both).
Both objectives are minimized.

Epsilon-dominance follows Laumanns et al. (2002): objective space is cut into boxes of
size epsilon (taken from the noise floor, so differences smaller than the noise do not
split the front); boxes are compared by Pareto dominance and each box keeps one point,
the one nearest its lower corner. One exception: the point with the lowest val_bpb always
stays (the main objective's extreme is never traded for a box corner). The result does
not depend on insertion order.

What it does not do: statistics. Whether a child is really better than its parent is
`population.scoring`'s question; this module trusts the estimates it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """A candidate as the archive sees it (population.scoring computes it): its val_bpb
    estimate with that estimate's standard error, the spread of its own runs, its mean
    peak memory and how many seeds it ran. Also the archive member record: a stored
    archive version is a list of `to_row()` dicts."""

    candidate_id: str
    val_bpb: float
    peak_mem_mb: float
    val_bpb_std: float = 0.0  # spread of its own runs over seeds
    n_seeds: int = 1
    val_bpb_se: float = 0.0  # standard error of `val_bpb` as an estimate of the true value

    @property
    def objectives(self) -> tuple[float, float]:
        return (self.val_bpb, self.peak_mem_mb)

    def to_row(self) -> dict:
        return {"candidate_id": self.candidate_id, "val_bpb": self.val_bpb, "peak_mem_mb": self.peak_mem_mb,
                "val_bpb_std": self.val_bpb_std, "n_seeds": self.n_seeds, "val_bpb_se": self.val_bpb_se}

    @classmethod
    def from_row(cls, row: dict) -> Point:
        """A stored archive row (rows written before the rename carry `val_std`)."""
        return cls(str(row["candidate_id"]), float(row["val_bpb"]), float(row["peak_mem_mb"]),
                   float(row.get("val_bpb_std", row.get("val_std", 0.0))), int(row.get("n_seeds", 1)),
                   float(row.get("val_bpb_se", 0.0)))


@dataclass(frozen=True)
class Constraints:
    """Hard limits from program.md; an infeasible point never enters the archive."""

    max_peak_mem_mb: float | None = None
    max_val_bpb: float | None = None

    def violation(self, p: Point) -> str | None:
        if self.max_peak_mem_mb is not None and p.peak_mem_mb > self.max_peak_mem_mb:
            return f"peak memory {p.peak_mem_mb:.0f} MB exceeds max_peak_mem_mb {self.max_peak_mem_mb:.0f}"
        if self.max_val_bpb is not None and p.val_bpb > self.max_val_bpb:
            return f"val_bpb {p.val_bpb:.4f} exceeds max_val_bpb {self.max_val_bpb:.4f}"
        return None


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Pareto dominance for minimization: a is no worse everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def box_of(p: Point, eps: tuple[float, float]) -> tuple[int, int]:
    return (math.floor(p.val_bpb / eps[0]), math.floor(p.peak_mem_mb / eps[1]))


def _corner_distance(p: Point, eps: tuple[float, float]) -> float:
    b = box_of(p, eps)
    return math.hypot(p.val_bpb / eps[0] - b[0], p.peak_mem_mb / eps[1] - b[1])


def epsilon_front(points: list[Point], eps: tuple[float, float]) -> list[Point]:
    """The epsilon-Pareto set of `points` (one point per non-dominated box), sorted by
    val_bpb then memory then id."""
    if eps[0] <= 0 or eps[1] <= 0:
        raise ValueError(f"epsilon must be positive, got {eps}")
    best_in_box: dict[tuple[int, int], Point] = {}
    for p in points:
        b = box_of(p, eps)
        cur = best_in_box.get(b)
        key = (_corner_distance(p, eps), p.val_bpb, p.peak_mem_mb, p.candidate_id)
        if cur is None or key < (_corner_distance(cur, eps), cur.val_bpb, cur.peak_mem_mb, cur.candidate_id):
            best_in_box[b] = p
    boxes = list(best_in_box)
    front = [best_in_box[b] for b in boxes if not any(dominates(o, b) for o in boxes)]
    return sorted(front, key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id))


def _with_best(front: list[Point], points: list[Point]) -> list[Point]:
    """The front plus the point with the lowest val_bpb when an epsilon box dropped it
    (a box keeps the point nearest its corner, which may be a little worse on val_bpb):
    the best member on the main objective is an extreme of the front and always stays."""
    best = min(points, key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id), default=None)
    if best is None or any(p.candidate_id == best.candidate_id for p in front):
        return front
    kept = [p for p in front if not dominates(best.objectives, p.objectives)]
    return sorted(kept + [best], key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id))


def nondominated(points: list[Point]) -> list[Point]:
    """The plain Pareto set, sorted by val_bpb ascending."""
    front = [p for p in points if not any(dominates(q.objectives, p.objectives) for q in points)]
    return sorted(front, key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id))


def hypervolume(points: list[Point], ref: tuple[float, float]) -> float:
    """Exact 2-D hypervolume dominated by `points` and bounded by `ref` (minimization)."""
    inside = [p for p in nondominated(points) if p.val_bpb < ref[0] and p.peak_mem_mb < ref[1]]
    inside = nondominated(inside)
    hv = 0.0
    for i, p in enumerate(inside):
        next_x = inside[i + 1].val_bpb if i + 1 < len(inside) else ref[0]
        hv += (next_x - p.val_bpb) * (ref[1] - p.peak_mem_mb)
    return hv


def hypervolume_contributions(points: list[Point], ref: tuple[float, float]) -> dict[str, float]:
    """How much hypervolume is lost when each point alone is removed."""
    total = hypervolume(points, ref)
    return {
        p.candidate_id: total - hypervolume([q for q in points if q.candidate_id != p.candidate_id], ref)
        for p in points
    }


def crowding_distance(points: list[Point]) -> dict[str, float]:
    """NSGA-II crowding distance on the two objectives; the extremes get infinity."""
    n = len(points)
    dist = {p.candidate_id: 0.0 for p in points}
    if n <= 2:
        return {k: math.inf for k in dist}
    for obj in (0, 1):
        ordered = sorted(points, key=lambda p: (p.objectives[obj], p.candidate_id))
        lo, hi = ordered[0].objectives[obj], ordered[-1].objectives[obj]
        dist[ordered[0].candidate_id] = math.inf
        dist[ordered[-1].candidate_id] = math.inf
        span = hi - lo
        if span <= 0:
            continue
        for i in range(1, n - 1):
            gap = ordered[i + 1].objectives[obj] - ordered[i - 1].objectives[obj]
            dist[ordered[i].candidate_id] += gap / span
    return dist


@dataclass
class ParetoArchive:
    """The epsilon-non-dominated feasible set, with the hypervolume history the loop
    appends to once per generation."""

    eps: tuple[float, float]
    ref: tuple[float, float]
    constraints: Constraints = field(default_factory=Constraints)
    members: list[Point] = field(default_factory=list)
    history: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def build(cls, points: list[Point], eps: tuple[float, float], ref: tuple[float, float],
              constraints: Constraints | None = None) -> ParetoArchive:
        arch = cls(eps=eps, ref=ref, constraints=constraints or Constraints())
        feasible = [p for p in points if arch.constraints.violation(p) is None]
        arch.members = _with_best(epsilon_front(feasible, eps), feasible)
        return arch

    def add(self, p: Point) -> bool:
        """Offer a point; returns whether it is in the archive afterwards."""
        if self.constraints.violation(p) is not None:
            return False
        others = [m for m in self.members if m.candidate_id != p.candidate_id]
        self.members = _with_best(epsilon_front(others + [p], self.eps), others + [p])
        return any(m.candidate_id == p.candidate_id for m in self.members)

    def ids(self) -> list[str]:
        return [m.candidate_id for m in self.members]

    def hypervolume(self) -> float:
        return hypervolume(self.members, self.ref)

    def contributions(self) -> dict[str, float]:
        return hypervolume_contributions(self.members, self.ref)

    def crowding(self) -> dict[str, float]:
        return crowding_distance(self.members)

    def record(self, generation: int) -> float:
        hv = self.hypervolume()
        self.history.append((generation, hv))
        return hv

    def best(self) -> Point | None:
        """The member with the lowest mean val_bpb."""
        return min(self.members, key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id), default=None)
