"""Scoring: the one place that says what a candidate's numbers are.

Flow: the loop (racing, acceptance, the archive), the TUI (`tui/snapshot.py`), `evolve
status/report` and export read a candidate's score from here, so they cannot disagree.
A `Scorer` reads the store's records (candidates and finished evaluations) and answers:

- which runs count: successful runs on the run's primary device type, made up to the
  archive version asked about (the generation cut);
- pairing: a child's paired differences against its parent, on the seeds they share;
  seeds are fresh every generation (population.noise), so a shared seed means the two
  runs were made in the same round of the same generation, next to each other;
- the noise model of archive version v (pooled pair noise and the empirical-Bayes prior
  of a child's gain, from children of generations 1..v);
- a child's posterior gain and its racing verdict (`race`): more seeds, accept, reject;
- a candidate's score (`score`): its val_bpb *estimate*, chained along its lineage:
  the root's mean plus each ancestor's posterior mean gain. Every link is a difference
  of runs made together, so load drift over the hours of a run cancels, and posterior
  means shrink lucky children. Memory is the mean of its own runs.

What it does not do: write, schedule or decide what enters the archive (that is
population.decisions). Its answers are pure functions of the records it is given.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from population import noise
from population.archive import Point
from population.store import CHILD_PURPOSES, Candidate, Evaluation, Purpose, Store

ROOT_ID = "root"
MIN_VAL_SEEDS = 2  # val_bpb seeds a child needs before it can enter the archive


@dataclass(frozen=True)
class NoiseModel:
    """The statistics of archive version v: pair noise, prior of a child's gain, epsilon."""

    version: int
    pair_var: float  # variance of one paired val_bpb difference
    prior: noise.Prior
    pooled: bool  # False: the root's noise floor stands in (too few children yet)

    @property
    def pair_sd(self) -> float:
        return math.sqrt(self.pair_var)


@dataclass(frozen=True)
class RacePolicy:
    """How children race (program.md's [seeds]): `initial` rounds first, `per_round` more
    while a child is promising, at most `max_seeds`; accept once P(no gain) <= accept_p / 2
    on val_bpb (or the memory test's p on memory) with at least 2 val seeds; stop a child
    whose P(no gain) is above `futility_p` and whose memory does not look lower."""

    initial: int = 1
    per_round: int = 1
    max_seeds: int = 4
    accept_p: float = 0.1
    futility_p: float = 0.4


@dataclass(frozen=True)
class Verdict:
    """Where a child stands in its race."""

    rounds: int  # rounds (paired seeds) it should have in all
    done: bool
    accepted: bool
    posterior: noise.Posterior
    p_mem: float
    mean_diff_mem: float
    why: str


@lru_cache(maxsize=65536)
def _posterior(diffs: tuple[float, ...], prior: noise.Prior, pair_var: float) -> noise.Posterior:
    return noise.posterior(diffs, prior, pair_var)


class Scorer:
    """Scores from the records of one run. `evaluations` maps candidate -> seed -> its
    finished evaluation (running and interrupted ones excluded); `floor` is the root's
    noise floor (None before it is known). The mappings may be live views that grow:
    answers about finished archive versions never change, and only those are cached."""

    def __init__(self, candidates: Mapping[str, Candidate], evaluations: Mapping[str, Mapping[int, Evaluation]],
                 device_type: str | None, floor: noise.NoiseFloor | None, finished_version: int,
                 epsilon_scale: float = 0.5):
        self.cands = candidates
        self.evals = evaluations
        self.device_type = device_type
        self.floor = floor
        self.finished_version = finished_version
        self.epsilon_scale = epsilon_scale
        self._models: dict[int, NoiseModel] = {}
        self._scores: dict[tuple[str, int], Point | None] = {}

    @classmethod
    def from_store(cls, store: Store, epsilon_scale: float = 0.5) -> Scorer:
        """For readers (TUI, report, export): everything from one store."""
        evals: dict[str, dict[int, Evaluation]] = {}
        for e in store.evaluations():
            evals.setdefault(e.candidate_id, {})[e.seed] = e
        stored = store.get_meta("noise_floor")
        floor = noise.NoiseFloor(float(stored["val_std"]), float(stored["mem_std"]), int(stored["n_seeds"]),
                                 float(stored["val_mean"]), float(stored["mem_mean"])) if stored else None
        return cls({c.id: c for c in store.candidates()}, evals, store.get_meta("device_type"), floor,
                   store.last_generation(), epsilon_scale)

    # -- which runs count ------------------------------------------------------------------

    def runs(self, cid: str, upto: int | None = None, purposes: frozenset[Purpose] | None = None) -> dict[int, Evaluation]:
        """Successful runs of `cid` on the primary device made up to generation `upto`."""
        out = {}
        for seed, e in self.evals.get(cid, {}).items():
            if not e.ok or e.peak_mem_mb is None:
                continue
            if self.device_type is not None and e.device_type != self.device_type:
                continue
            if upto is not None and e.generation > upto:
                continue
            if purposes is not None and e.purpose not in purposes:
                continue
            out[seed] = e
        return out

    def pairs(self, cid: str, upto: int | None = None) -> list[tuple[int, float, float]]:
        """(seed, d_val, d_mem) of child - parent on the seeds where the child ran for
        itself (racing or re-scoring) and the parent ran the same seed, in seed order."""
        c = self.cands[cid]
        if c.parent_id is None:
            return []
        mine = self.runs(cid, upto, CHILD_PURPOSES | {Purpose.RESCORE})
        theirs = self.runs(c.parent_id, upto)
        return [(s, float(mine[s].val_bpb) - float(theirs[s].val_bpb),  # type: ignore[arg-type]
                 float(mine[s].peak_mem_mb) - float(theirs[s].peak_mem_mb))  # type: ignore[arg-type]
                for s in sorted(set(mine) & set(theirs))]

    # -- the noise model of an archive version ----------------------------------------------

    def model(self, v: int) -> NoiseModel:
        """Pair noise and prior from the children of generations 1..v (only finished
        versions: a decision never depends on what is still running; version 0 has no
        children and is known once the root's floor is)."""
        if v > max(self.finished_version, 0):
            raise ValueError(f"noise model asked for unfinished archive version {v}")
        hit = self._models.get(v)
        if hit is not None:
            return hit
        series, first = [], []
        for c in self.cands.values():
            if c.id == ROOT_ID or not 1 <= c.generation <= v:
                continue
            d = [p[1] for p in self.pairs(c.id, v)]
            if d:
                series.append(d)
                first.append(d[0])
        pooled = noise.pair_noise_var(series)
        floor_var = 2.0 * (self.floor.val_std ** 2 if self.floor else 0.0)
        pair_var = pooled if pooled is not None else floor_var
        pair_var = max(pair_var, 1e-12)
        model = NoiseModel(v, pair_var, noise.fit_prior(first, pair_var), pooled is not None)
        self._models[v] = model
        return model

    def epsilon(self, v: int) -> tuple[float, float]:
        """Archive box sizes at version v: `epsilon_scale` single-run noise standard
        deviations on val_bpb (re-estimated from the pooled pair noise as the run goes),
        the root's memory spread on memory."""
        if self.floor is None:
            raise ValueError("epsilon needs the root's noise floor")
        single_sd = self.model(v).pair_sd / math.sqrt(2.0)
        return noise.epsilon(single_sd, self.floor.mem_std, self.floor.val_mean, self.floor.mem_mean,
                             self.epsilon_scale)

    # -- a child's gain and its race -----------------------------------------------------------

    def gain(self, cid: str, model: NoiseModel, upto: int | None = None) -> noise.Posterior:
        diffs = tuple(round(p[1], 12) for p in self.pairs(cid, upto))
        return _posterior(diffs, model.prior, model.pair_var)

    def race(self, cid: str, policy: RacePolicy, mem_margin: float) -> Verdict:
        """The verdict on child `cid` given its pairs so far, judged with the noise model
        of the archive version it saw (fixed while it races)."""
        c = self.cands[cid]
        model = self.model(c.archive_version)
        pairs = self.pairs(cid, c.generation)  # its own rounds (re-scoring comes later)
        post = _posterior(tuple(round(p[1], 12) for p in pairs), model.prior, model.pair_var)
        n = len(pairs)
        d_mem = [p[2] for p in pairs]
        p_mem = noise.one_sided_p(d_mem, mem_margin)
        m_mem = statistics.fmean(d_mem) if d_mem else math.nan
        why = (f"{n} paired seeds: d_val {post.mean_diff:+.5f} (posterior {post.mean:+.5f} +- {post.sd:.5f}, "
               f"P(no gain) {post.p_no_gain:.3g}), d_mem {m_mem:+.1f} MB (p {p_mem:.3g})")
        if n < policy.initial:
            return Verdict(policy.initial, False, False, post, p_mem, m_mem, why)
        if n >= MIN_VAL_SEEDS and (post.p_no_gain <= policy.accept_p / 2 or p_mem <= policy.accept_p / 2):
            return Verdict(n, True, True, post, p_mem, m_mem, why)
        if n >= policy.max_seeds:
            return Verdict(n, True, False, post, p_mem, m_mem, why)
        if post.p_no_gain <= policy.futility_p or m_mem < -mem_margin:
            return Verdict(min(policy.max_seeds, n + policy.per_round), False, False, post, p_mem, m_mem, why)
        return Verdict(n, True, False, post, p_mem, m_mem, why)

    # -- a candidate's score ------------------------------------------------------------------------

    def live_version(self) -> int:
        """The newest generation any run belongs to: the cut for "everything measured so
        far" (once a run has ended, its last archive version)."""
        return max((e.generation for runs in self.evals.values() for e in runs.values()), default=0)

    def gap(self, cid: str, v: int) -> float | None:
        """Mean test_bpb - val_bpb over the runs that count for `cid` at version v (the
        sealed split's view of overfitting); None without a run that has both."""
        gaps = [float(e.test_bpb) - float(e.val_bpb) for e in self.runs(cid, v).values()  # type: ignore[arg-type]
                if e.test_bpb is not None]
        return statistics.fmean(gaps) if gaps else None

    def score(self, cid: str, v: int) -> Point | None:
        """The candidate's score at archive version v: runs made up to generation v, the
        noise model of version v-1 (fixed before generation v's results, so the score
        written into archive version v is the one every later reader computes); None
        when it has no successful run (or no paired one, or an ancestor has none)."""
        key = (cid, v)
        if v <= self.finished_version and key in self._scores:
            return self._scores[key]
        out = self._score(cid, v)
        if v <= self.finished_version:
            self._scores[key] = out
        return out

    def _score(self, cid: str, v: int) -> Point | None:
        own = self.runs(cid, v)
        if not own:
            return None
        vals = [float(e.val_bpb) for e in own.values()]  # type: ignore[arg-type]
        mem = statistics.fmean(float(e.peak_mem_mb) for e in own.values())  # type: ignore[arg-type]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        c = self.cands[cid]
        if c.parent_id is None:
            root = [float(e.val_bpb) for e in self.runs(cid, 0).values()] or vals  # type: ignore[arg-type]
            se = (statistics.stdev(root) / math.sqrt(len(root))) if len(root) > 1 else 0.0
            return Point(cid, statistics.fmean(root), mem, spread, len(vals), se)
        parent = self.score(c.parent_id, v)
        if parent is None or not self.pairs(cid, v):
            return None
        model = self.model(max(min(v - 1, self.finished_version), 0))
        post = self.gain(cid, model, v)
        return Point(cid, parent.val_bpb + post.mean, mem, spread, len(vals),
                     math.hypot(parent.val_bpb_se, post.sd))
