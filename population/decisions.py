"""Decisions: which runs a generation needs, and what it ends with.

Flow: the loop asks `wanted_runs(g)` which (candidate, seed, purpose) runs generation g
still needs: the root's noise-floor seeds; each racing child's next round together with
its parent's control run on the same fresh seed, as one unit the loop starts at once
(pairing in time: both see the same machine load); fresh-seed re-scoring of archive
members with their parents' controls, likewise. When
nothing is left it calls `finalize(g)`, which in one transaction
- generation 0: stores the noise floor and the hypervolume reference;
- later: accepts or rejects each finished child by its race verdict
  (population.scoring), lets accepted children into the archive when they are
  epsilon-non-dominated, drops re-scored members whose gain no longer holds, and writes
  archive version g with its epsilon (re-estimated from the pooled pair noise) and
  hypervolume.
`stop_reason(v)` applies program.md's stopping criteria.

What it does not do: schedule, talk to the arena or the proposers, or compute a score
(population.scoring does; these rules only read its answers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from arena.errors import EvolveError
from arena.records import Status
from population import noise
from population.archive import Constraints, ParetoArchive
from population.program import ProgramConfig
from population.scoring import ROOT_ID, RacePolicy, Verdict
from population.state import RunState
from population.store import GenerationRecord, Purpose

MEM_MARGIN_REL = 0.02  # a memory saving must exceed 2% of the root's peak memory
FALL_OUT_P = 0.5  # a re-scored member falls out once it is more likely no better than better


class LoopError(EvolveError):
    """The loop cannot go on (the message says why)."""


class RootFailed(LoopError):
    """The unmodified train.py failed: nothing can be compared with it."""


class Decisions:
    def __init__(self, state: RunState, cfg: ProgramConfig):
        self.state, self.cfg = state, cfg
        self.policy = RacePolicy(cfg.initial_seeds, cfg.seeds_per_round, cfg.max_seeds, cfg.accept_p,
                                 cfg.futility_p)
        self.constraints = Constraints(cfg.max_peak_mem_mb, cfg.max_val_bpb)
        self._verdicts: dict[tuple, Verdict] = {}

    def mem_margin(self) -> float:
        """A memory saving counts when it exceeds `MEM_MARGIN_REL` of the root's memory
        (and its run-to-run spread): smaller savings are not worth a place."""
        floor = self.state.floor()
        return 0.0 if floor is None else max(floor.mem_std, MEM_MARGIN_REL * floor.mem_mean)

    def verdict(self, cid: str) -> Verdict:
        """The race verdict on child `cid`, cached by the runs it depends on (its own and
        its parent's on the child's round seeds, each with its status): the loop asks
        after every result, and the posterior is the costly part."""
        c = self.state.cands[cid]
        mine, theirs = self.state.evals.get(cid, {}), self.state.evals.get(c.parent_id or ROOT_ID, {})
        seeds = (noise.round_seed(c.generation, c.idx, r) for r in range(self.policy.max_seeds))
        key = (cid, tuple((s, mine[s].id, mine[s].status, theirs[s].id, theirs[s].status)
                          for s in seeds if s in mine and s in theirs))
        hit = self._verdicts.get(key)
        if hit is None:
            hit = self._verdicts[key] = self.state.scorer().race(cid, self.policy, self.mem_margin())
        return hit

    # -- which runs are needed ----------------------------------------------------------------

    def rescore_members(self, g: int) -> list[str]:
        """Archive members (not the root) of version g-1 re-scored during generation g."""
        if g < 1 or self.cfg.rescore_every <= 0 or self.cfg.rescore_seeds <= 0 or g % self.cfg.rescore_every:
            return []
        return [r["candidate_id"] for r in self.state.generation(g - 1).archive if r["candidate_id"] != ROOT_ID]

    def wanted_runs(self, g: int, children_only: bool = False) -> list[list[tuple[str, int, Purpose]]]:
        """The runs generation g still needs given the finished results, in units to be
        started together: (parent's control, child) on one seed, so that both see the
        same machine load; each (candidate, seed, purpose)."""
        units: list[list[tuple[str, int, Purpose]]] = []

        def unit(*runs: tuple[str, int, Purpose]) -> None:
            todo = [r for r in runs if not self._finished(r[0], r[1])]
            if todo:
                units.append(todo)

        if g == 0:
            for k in range(self.cfg.root_seeds):
                unit((ROOT_ID, noise.root_seed(k), Purpose.ROOT))
            return units
        for c in self.state.children(g):
            if c.commit is None or c.status not in (Status.PROPOSED, Status.RUNNING, Status.EVALUATED):
                continue
            for r in range(self.rounds(c.id)):
                s = noise.round_seed(g, c.idx, r)
                unit((c.parent_id or ROOT_ID, s, Purpose.PAIR),
                     (c.id, s, Purpose.INITIAL if r < self.policy.initial else Purpose.RACE))
        for k, cid in enumerate([] if children_only else self.rescore_members(g)):
            parent_id = self.state.cands[cid].parent_id or ROOT_ID
            for j in range(self.cfg.rescore_seeds):
                s = noise.rescore_seed(g, k, j)
                unit((parent_id, s, Purpose.PAIR), (cid, s, Purpose.RESCORE))
        return units

    def _finished(self, cid: str, seed: int) -> bool:
        e = self.state.evals.get(cid, {}).get(seed)
        return e is not None and e.finished

    def rounds(self, cid: str) -> int:
        """Rounds child `cid` should have: the race verdict once its rounds so far are
        all finished (for it and its parent), else the rounds it already has."""
        c = self.state.cands[cid]
        mine, theirs = self.state.evals.get(cid, {}), self.state.evals.get(c.parent_id or ROOT_ID, {})
        n = self.policy.initial
        while True:
            seeds = [noise.round_seed(c.generation, c.idx, r) for r in range(n)]
            if not all(s in mine and s in theirs for s in seeds):
                return n
            if self.state.version() < max(c.archive_version, 0):
                return n  # no verdict before the noise model it is judged by (the root's floor) exists
            nxt = self.verdict(cid).rounds
            if nxt <= n:
                return n
            n = nxt

    # -- finalizing -------------------------------------------------------------------------------

    def finalize(self, g: int) -> None:
        st = self.state
        with st.transaction():
            if g == 0:
                self._finalize_root()
            else:
                self._decide_children(g)
                self._rescore(g)
            archive = self._archive(g, [c.id for c in st.cands.values() if c.status == Status.CONFIRMED])
            if not archive.members:
                root = st.scorer().score(ROOT_ID, g)
                assert root is not None
                archive.members = [root]  # the root stays a parent even when a constraint excludes it
            hv = archive.hypervolume()
            rows = [p.to_row() for p in archive.members]
            counts: dict[str, int] = {}
            for c in st.children(g):
                counts[c.status.value] = counts.get(c.status.value, 0) + 1
            model = st.scorer().model(g - 1) if g >= 1 else None
            summary = {"counts": counts, "n_evaluations": sum(len(v) for v in st.evals.values()),
                       "cost_usd": st.store.total_cost(), "epsilon": list(archive.eps)}
            if model is not None:
                summary["noise"] = {"pair_sd": model.pair_sd, "pooled": model.pooled, "prior_mean": model.prior.mean,
                                    "prior_scale": model.prior.scale, "prior_n": model.prior.n}
            statuses = {c.id: c.status.value for c in st.cands.values() if c.generation <= g}
            st.finish_generation(GenerationRecord(g, time.time(), hv, rows, statuses, summary))
            st.event("generation", f"generation {g} done: archive {len(rows)}, hypervolume {hv:.5g}, "
                     f"best val_bpb {min(r['val_bpb'] for r in rows):.4f}", g)

    def _archive(self, g: int, ids: list[str]) -> ParetoArchive:
        """The epsilon-non-dominated feasible set of `ids`, scored at version g. Epsilon is
        that of version g-1 (fixed before g's results; the root's at generation 0)."""
        sc = self.state.scorer()
        points = [p for p in (sc.score(cid, g) for cid in ids) if p is not None]
        eps = sc.epsilon(max(g - 1, 0))
        ref = tuple(self.state.meta("reference"))
        return ParetoArchive.build(points, eps, ref, self.constraints)  # type: ignore[arg-type]

    def _finalize_root(self) -> None:
        st = self.state
        ok = [e for e in st.evals.get(ROOT_ID, {}).values() if e.ok and e.peak_mem_mb is not None]
        if st.meta("device_type") is None and ok:
            st.set_meta("device_type", ok[0].device_type)
        runs = [(float(e.val_bpb), float(e.peak_mem_mb)) for e in st.scorer().runs(ROOT_ID, 0).values()]  # type: ignore[arg-type]
        if len(runs) < 2:
            raise RootFailed("the root needs at least 2 successful runs for the noise floor")
        floor = noise.noise_floor(runs)
        ref_mem = self.cfg.max_peak_mem_mb or 4.0 * floor.mem_mean
        st.set_meta("noise_floor", {"val_std": floor.val_std, "mem_std": floor.mem_std, "n_seeds": floor.n_seeds,
                                    "val_mean": floor.val_mean, "mem_mean": floor.mem_mean})
        st.set_meta("reference", [floor.val_mean * 1.25, max(ref_mem, floor.mem_mean * 1.01)])
        st.set_status(ROOT_ID, Status.EVALUATED)
        st.set_status(ROOT_ID, Status.CONFIRMED, "root")
        eps = floor.epsilon(self.cfg.epsilon_scale)
        st.event("noise_floor", f"noise floor: val_bpb std {floor.val_std:.5f} over {floor.n_seeds} seeds, "
                 f"epsilon {eps[0]:.5f} / {eps[1]:.1f} MB", 0)

    def _decide_children(self, g: int) -> None:
        st = self.state
        accepted: dict[str, str] = {}
        for c in st.children(g):
            if c.status != Status.EVALUATED:
                continue
            v = self.verdict(c.id)
            p = st.scorer().score(c.id, g)
            violation = self.constraints.violation(p) if p else "no successful run"
            if violation:
                st.set_status(c.id, Status.REJECTED, violation)
            elif v.accepted:
                accepted[c.id] = v.why
            else:
                st.set_status(c.id, Status.REJECTED, "not better: " + v.why)
        # a child better than its parent still has to earn a place on the front
        members = [c.id for c in st.cands.values() if c.status == Status.CONFIRMED]
        front = set(self._archive(g, members + sorted(accepted)).ids())
        for cid, why in accepted.items():
            if cid in front:
                st.set_status(cid, Status.CONFIRMED, "confirmed: " + why)
                st.event("confirmed", f"{cid} confirmed: {why}", g, cid)
            else:
                st.set_status(cid, Status.REJECTED, "better than its parent but epsilon-dominated by the archive: "
                              + why)

    def _rescore(self, g: int) -> None:
        st = self.state
        for k, cid in enumerate(self.rescore_members(g)):
            c = st.cands[cid]
            if c.status != Status.CONFIRMED:
                continue
            seeds = [noise.rescore_seed(g, k, j) for j in range(self.cfg.rescore_seeds)]
            failed = [s for s in seeds if s in st.evals.get(cid, {}) and not st.evals[cid][s].ok]
            if failed:
                st.set_status(cid, Status.REJECTED, f"failed on re-scoring seed {failed[0]}")
                st.event("fell_out", f"{cid} failed on re-scoring seed {failed[0]}", g, cid)
                continue
            sc = st.scorer()
            post = sc.gain(cid, sc.model(c.archive_version), g)
            d_mem = [p[2] for p in sc.pairs(cid, g)]
            mem_holds = noise.one_sided_p(d_mem, self.mem_margin()) <= FALL_OUT_P
            if post.p_no_gain > FALL_OUT_P and not mem_holds:
                st.set_status(cid, Status.REJECTED, f"fell out on re-scoring: P(no gain) {post.p_no_gain:.3g} "
                              f"over {post.n} paired seeds")
                st.event("fell_out", f"{cid} fell out on re-scoring (P(no gain) {post.p_no_gain:.3g}, "
                         f"{post.n} seeds)", g, cid)

    # -- stopping ----------------------------------------------------------------------------------

    def stop_reason(self, v: int, clock: Callable[[], float]) -> str | None:
        if v < 0:
            return None
        if v >= self.cfg.generations:
            return f"reached {self.cfg.generations} generations"
        best = min(r["val_bpb"] for r in self.state.generation(v).archive)
        if self.cfg.target_val_bpb is not None and best <= self.cfg.target_val_bpb:
            return f"reached target val_bpb {self.cfg.target_val_bpb} (best {best:.4f})"
        if self.cfg.max_cost_usd is not None and self.state.store.total_cost() >= self.cfg.max_cost_usd:
            return f"spent the maximum cost {self.cfg.max_cost_usd} USD"
        if self.cfg.max_hours is not None:
            sessions = self.state.store.sessions()
            start = sessions[0]["started_at"] if sessions else clock()
            if (clock() - start) / 3600.0 >= self.cfg.max_hours:
                return f"ran the maximum {self.cfg.max_hours} hours"
        return None

