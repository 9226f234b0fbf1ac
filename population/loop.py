"""The generation loop: program.md + archive -> proposers -> arena -> store -> archive.

It only schedules. Generation g (generation 0 measures the root, which gives the noise
floor) goes:
1. plan (population.planning): `population` children, each with a persona, a parent and
   what it sees, from the archive version it sees; the first `lookahead` children of the
   next generation are planned one version early so the devices never wait for an LLM
   (generation 1's while the root runs, from version -1: the root, unmeasured);
2. propose: proposer calls run in worker threads while the devices are busy; answers are
   committed to git in plan order and checked by the guard (no-ops, duplicates);
3. run (population.decisions says which runs): each racing round puts a child and its
   parent's control on the same fresh seed, submitted together; re-scoring runs too;
   a child's first round that is clearly behind its control is stopped early
   (population.cascade) and the child rejected;
4. finalize (population.decisions): verdicts, archive version g, in one transaction.

Every write goes through `population.state.RunState`; every decision is a pure function
of the store (random draws seeded by run seed, generation and child index), so a loop
killed at any moment and started again on the same store continues where it was:
finished evaluations are kept, runs that were in flight are redone, and the archive is
the one an uninterrupted run would have reached with the same results.

What it does not do: train, evaluate or talk to an LLM itself (the arena and the
proposer do), score (population.scoring), decide (population.decisions), or print
anything (the CLI does).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from agents.crossover import CrossoverResult
from agents.proposal import InvalidEdit, ProposalContext, Proposer
from arena.guards import seed_insensitive
from arena.protocol import Arena
from arena.records import RunOutcome, RunRequest, RunResult, Status
from population import noise
from population.cascade import Cascade, Stop
from population.decisions import Decisions, LoopError, RootFailed
from population.planning import Planner
from population.program import ProgramConfig
from population.scoring import ROOT_ID
from population.state import RunState
from population.store import CHILD_PURPOSES, Candidate, LLMCall, Purpose, Store

log = logging.getLogger(__name__)

__all__ = ["ROOT_ID", "GenerationLoop", "LoopError", "LoopOutcome", "RootFailed"]

MAX_ARENA_ERRORS = 3  # arena failures of one (candidate, seed) before the loop gives up


class Repo(Protocol):
    @property
    def root_commit(self) -> str: ...
    def read_file(self, commit: str, path: str) -> str: ...
    def commit_candidate(self, parent: str, train_py: str, message: str) -> str: ...


@dataclass(frozen=True)
class LoopOutcome:
    generations: int  # the last finished generation (archive version)
    stop_reason: str
    archive: list[dict]
    hypervolume: float


def _default_guard(repo: Repo, commit: str, known: set[str]) -> tuple[bool, str, str]:
    from arena import guards

    verdict = guards.check(repo, commit, known)  # type: ignore[arg-type]
    return verdict.ok, verdict.message, verdict.normalized_diff_hash


class GenerationLoop:
    """Runs generations until a stopping criterion of program.md holds.

    `personas` names the personas the bandit chooses among, `preferences` their parent
    preference ("best", "frontier" or "failed", as agents.personas says); `guard(repo,
    commit, known_hashes) -> (ok, message, hash)` refuses no-ops and duplicates (default:
    arena.guards.check); `clock` is wall time (for max_hours)."""

    def __init__(self, store: Store, repo: Repo, arena: Arena, proposer: Proposer,
                 config: ProgramConfig, personas: list[str], slots: int,
                 preferences: dict[str, str] | None = None,
                 crossover_personas: set[str] | None = None,
                 weights: dict[str, float] | None = None,
                 guard: Callable[[Repo, str, set[str]], tuple[bool, str, str]] = _default_guard,
                 on_event: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        if not personas:
            raise LoopError("no personas to propose children")
        self.store, self.repo, self.arena, self.proposer = store, repo, arena, proposer
        self.cfg = config
        self.slots = slots
        self.personas = sorted(personas)
        self.guard = guard
        self.clock = clock
        self.state = RunState(store, config.epsilon_scale, on_event)
        lookahead = self.state.meta("lookahead")
        if lookahead is None:
            lookahead = min(slots, config.population) if config.lookahead < 0 else config.lookahead
            self.state.set_meta("lookahead", lookahead)
        self.lookahead = int(lookahead)
        self._files: dict[str, str] = {}
        self.planner = Planner(self.state, config, self.personas, preferences or {}, crossover_personas or set(),
                               self.lookahead, self._train_py, getattr(repo, "lineage", None),
                               weights or {})
        self.decisions = Decisions(self.state, config)
        self.cascade = Cascade(store, config.cascade_stop_p, config.cascade_min_pairs)
        self._inflight: dict[tuple[str, int], tuple[int, int]] = {}  # (candidate, seed) -> (evaluation id, tag)
        self._arena_errors: dict[tuple[str, int], int] = {}
        self._proposing: dict[str, Future] = {}
        self._llm_calls: queue.Queue[LLMCall] = queue.Queue()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=config.proposal_workers, thread_name_prefix="propose")

    # -- LLM call records (called from proposer threads; written by the loop's thread) ------

    def on_llm_call(self, record: Any) -> None:
        """The `on_llm_call` hook for agents.build_proposer: queue the record; the loop's
        thread (the store's only writer) stores it with the candidate being proposed."""
        self._llm_calls.put(LLMCall(
            candidate_id=getattr(self._local, "candidate_id", None),
            persona=str(getattr(record, "persona", "") or ""), model=str(getattr(record, "model", "") or ""),
            prompt_tokens=int(getattr(record, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(record, "completion_tokens", 0) or 0),
            cost_usd=float(getattr(record, "cost_usd", 0.0) or 0.0),
            latency_s=float(getattr(record, "latency_s", 0.0) or 0.0),
            error=str(getattr(record, "error", "") or ""), created_at=time.time(),
        ))

    def _drain_llm_calls(self) -> None:
        while True:
            try:
                call = self._llm_calls.get_nowait()
            except queue.Empty:
                return
            self.state.add_llm_call(call)

    # -- start and restart -------------------------------------------------------------------

    def _recover(self) -> None:
        """Start (or restart) from the store: runs a dead process left in flight are
        marked interrupted and will be redone; candidates caught mid-run go back to the
        state their finished evaluations justify."""
        st = self.state
        for e in st.interrupt_running():
            st.event("interrupted", f"run of {e.candidate_id} on seed {e.seed} was interrupted; redoing it",
                     e.generation, e.candidate_id, seed=e.seed)
        st.reload()
        for c in list(st.cands.values()):
            if c.status == Status.RUNNING:
                st.set_status(c.id, Status.EVALUATED if st.own_done(c.id) else Status.PROPOSED)
        if ROOT_ID not in st.cands:
            st.add_candidate(Candidate(
                id=ROOT_ID, generation=0, idx=0, parent_id=None, persona="root",
                status=Status.PROPOSED, archive_version=-1, commit=self.repo.root_commit,
                hypothesis="the unmodified train.py", model="",
            ))

    def version(self) -> int:
        return self.state.version()

    def stop_reason(self, v: int) -> str | None:
        return self.decisions.stop_reason(v, self.clock)

    def _train_py(self, commit: str) -> str:
        if commit not in self._files:
            self._files[commit] = self.repo.read_file(commit, "train.py")
        return self._files[commit]

    # -- proposing ------------------------------------------------------------------------------

    def _propose_job(self, cid: str, ctx: ProposalContext) -> Any:
        self._local.candidate_id = cid
        try:
            if ctx.second_parent_commit:
                from agents.crossover import CrossoverPair, gated_crossover

                rows = {r.commit: r for r in self.planner.archive_rows(self.state.cands[cid].archive_version)}
                pair = CrossoverPair(rows[ctx.parent_commit], rows[ctx.second_parent_commit], "", 0)
                return gated_crossover(self.repo, pair, ctx, getattr(self.proposer, "checks", ()))  # type: ignore[arg-type]
            return self.proposer.propose(ctx)
        finally:
            self._local.candidate_id = None

    def _dispatch_proposals(self) -> None:
        waiting = [c for c in self.state.in_plan_order()
                   if c.id != ROOT_ID and c.status == Status.PROPOSED and c.commit is None
                   and c.id not in self._proposing]
        for c in waiting:
            if len(self._proposing) >= self.cfg.proposal_workers:
                return
            tried = self.planner.tried(c)
            if tried is None:
                continue
            ctx = self.planner.build_context(c, tried)
            self._proposing[c.id] = self._pool.submit(self._propose_job, c.id, ctx)

    def _collect_proposals(self) -> None:
        """Commit finished proposals in plan order (gen, idx), so that the duplicate
        check sees the same earlier candidates whatever order the proposers finished in."""
        st = self.state
        for c in st.in_plan_order():
            if c.id == ROOT_ID or c.status != Status.PROPOSED or c.commit is not None:
                continue
            fut = self._proposing.get(c.id)
            if fut is None or not fut.done():
                return
            del self._proposing[c.id]
            answer = fut.result()  # a proposer's configuration error stops the run here
            self._drain_llm_calls()
            for refusal in getattr(answer, "refusals", ()):  # device time saved before the arena
                st.event("novelty_refused" if refusal.is_repeat else "preflight_refused",
                         f"{c.id} ({c.persona}): {refusal.reason}", c.generation, c.id, check=refusal.kind,
                         duplicate_of=refusal.duplicate_of, saved_runs=self.cfg.initial_seeds,
                         saved_budget_s=self.cfg.initial_seeds * self.cfg.budget_s)
            merge_commit = None
            if isinstance(answer, CrossoverResult):
                answer, merge_commit = answer.outcome, answer.merge_commit
            if isinstance(answer, InvalidEdit):
                with st.transaction():
                    st.record_proposal(c.id, None, answer.model, answer.hypothesis, "")
                    st.set_status(c.id, Status.INVALID_EDIT, answer.reason)
                    st.event("invalid_edit", f"{c.id} ({c.persona}): {answer.reason}", c.generation, c.id,
                             raw_reply=answer.raw_reply[-8000:])
                continue
            parent = st.cands[c.parent_id or ROOT_ID]
            message = (f"{c.persona}: {answer.hypothesis}\n\ncandidate: {c.id}\nparent: {parent.id}\n"
                       f"model: {answer.model}\narchive_version: {c.archive_version}\n")
            if merge_commit is not None:
                sha = merge_commit  # the crossover's merge commit, with both parents
            else:
                sha = self.repo.commit_candidate(parent.commit or "", answer.train_py, message)
            self._files[sha] = answer.train_py
            with st.transaction():
                self._guard(st.record_proposal(c.id, sha, answer.model, answer.hypothesis, answer.edit_format))

    def _guard(self, c: Candidate) -> None:
        st = self.state
        ok, message, digest = self.guard(self.repo, c.commit or "", set(st.known_diffs()))
        if digest:
            st.record_diff_hash(c.id, digest)
        if not ok:
            st.set_status(c.id, Status.GUARD_REFUSED, message)
            st.event("guard_refused", f"{c.id} ({c.persona}): {message}", c.generation, c.id)
        else:
            st.event("proposed", f"{c.id} ({c.persona}) from {c.parent_id}: {c.hypothesis}", c.generation, c.id)

    # -- running ---------------------------------------------------------------------------------

    def _needed_runs(self, g: int, children_only: bool = False) -> list[list[tuple[str, int, Purpose]]]:
        units = [[r for r in u if (r[0], r[1]) not in self._inflight]
                 for u in self.decisions.wanted_runs(g, children_only)]
        return [u for u in units if u]

    def _dispatch_runs(self, g: int) -> None:
        """Start the runs generation g needs (or, when it needs none, the early children's
        of g+1). A unit (a child's run and its parent's control) starts whole, on free
        slots at the same moment, unless it is larger than the arena."""
        tag = g
        needed = self._needed_runs(g)
        if not needed and self.version() == g - 1:
            tag, needed = g + 1, self._needed_runs(g + 1, children_only=True)
        for unit in needed:
            free = self.arena.free_slots()
            if free <= 0 or (free < len(unit) <= self.slots):
                return
            for cid, seed, purpose in unit:
                self._submit(cid, seed, purpose, tag)

    def _submit(self, cid: str, seed: int, purpose: Purpose, tag: int) -> None:
        st = self.state
        c = st.cands[cid]
        eval_id = st.start_evaluation(cid, seed, tag, purpose)
        self._inflight[(cid, seed)] = (eval_id, tag)
        if purpose != Purpose.PAIR and c.status in (Status.PROPOSED, Status.EVALUATED):
            st.set_status(cid, Status.RUNNING)
        self.arena.submit(RunRequest(cid, c.commit or "", seed, self.cfg.budget_s))

    def _settle(self, cid: str) -> None:
        """A running candidate with nothing left in flight is evaluated (or back to
        proposed when no run of its own succeeded)."""
        c = self.state.cands[cid]
        if c.status == Status.RUNNING and not any(k == cid for k, _ in self._inflight):
            self.state.set_status(cid, Status.EVALUATED if self.state.own_done(cid) else Status.PROPOSED)

    def _record(self, r: RunResult) -> None:
        st = self.state
        key = (r.candidate_id, r.seed)
        entry = self._inflight.pop(key, None)
        if entry is None:
            log.debug("result for %s seed %s arrived after its run was called off; ignored",
                      r.candidate_id, r.seed)
            return
        if r.outcome != RunOutcome.FINISHED:
            self._redo(entry[0], r)
            return
        if r.status != Status.EVALUATED and not r.status.is_failure():
            raise LoopError(f"the arena returned a finished run of {r.candidate_id} with status "
                            f"{r.status.value}; a backend must report cancellations as RunOutcome.CANCELLED")
        e = st.finish_evaluation(entry[0], r)
        c = st.cands[r.candidate_id]
        own = e.purpose in CHILD_PURPOSES or e.purpose == Purpose.ROOT
        if r.status.is_failure():
            tail = (r.message.strip().splitlines() or [""])[-1]
            if c.id == ROOT_ID:
                raise RootFailed(f"the root train.py failed on seed {r.seed} ({r.status.value}): {tail}")
            if own:
                self._cancel(c.id)
                st.set_status(c.id, r.status, r.message)
                st.event(r.status.value, f"{c.id} {r.status.value} on seed {r.seed}: {tail[:200]}", e.generation, c.id)
            else:
                st.event("run_failed", f"{e.purpose.value} run of {c.id} on seed {r.seed}: {r.status.value}",
                         e.generation, c.id)
            return
        if own:
            self._settle(c.id)
        st.event("evaluated", f"{c.id} seed {r.seed}: val_bpb {r.val_bpb:.4f} mem {r.peak_mem_mb:.0f} MB"
                 if r.val_bpb is not None and r.peak_mem_mb is not None else f"{c.id} seed {r.seed}",
                 e.generation, c.id)
        pinned = seed_insensitive({seed: run.val_bpb for seed, run in st.scorer().runs(c.id).items()})
        if pinned:  # a seed override (docs/threat_model.md)
            st.event("seed_insensitive", f"{c.id}: {pinned}", e.generation, c.id)

    def _redo(self, eval_id: int, r: RunResult) -> None:
        """A run with no outcome (cancelled, or the arena itself failed): run it again;
        nothing is counted against the candidate."""
        key = (r.candidate_id, r.seed)
        self.state.interrupt_evaluation(eval_id, r.message or f"returned {r.outcome.value}")
        self._settle(r.candidate_id)
        if r.outcome == RunOutcome.ARENA_ERROR:
            self._arena_errors[key] = self._arena_errors.get(key, 0) + 1
            if self._arena_errors[key] >= MAX_ARENA_ERRORS:
                raise LoopError(f"the arena failed {MAX_ARENA_ERRORS} times on {r.candidate_id} seed {r.seed}: "
                                f"{r.message.strip()[-300:]} (the store is intact; fix the arena and --resume)")
        self.state.event("interrupted", f"run of {r.candidate_id} on seed {r.seed} came back without an outcome "
                         f"({r.outcome.value}); it will be redone", None, r.candidate_id)

    def _cancel(self, cid: str) -> None:
        self.arena.cancel(cid)
        for (k, seed), (eval_id, _tag) in list(self._inflight.items()):
            if k == cid:
                del self._inflight[(k, seed)]
                self.state.cancel_evaluation(eval_id, cid, f"cancelled: {cid} already failed")

    def _check_cascade(self) -> None:
        """Stop the first rounds of children that are clearly behind their parents'
        controls on the same seed (population.cascade), with both runs called off."""
        if not self.cascade.enabled or not self._inflight:
            return
        live = self.arena.progress()
        st = self.state
        for cid, seed in list(self._inflight):
            c = st.cands[cid]
            if (cid, seed) not in live or c.parent_id is None or seed != noise.round_seed(c.generation, c.idx, 0):
                continue
            control = (c.parent_id, seed)
            if control in live:
                points, mem = live[control].points, live[control].peak_mem_mb
            elif control in self._inflight:
                continue  # the control has not printed progress yet
            else:
                done = st.evals.get(c.parent_id, {}).get(seed)
                if done is None or not done.ok:
                    continue
                points, mem = self.cascade.curve(c.parent_id, seed), done.peak_mem_mb
            stop = self.cascade.check(st.scorer(), c, live[(cid, seed)], points, mem, self.decisions.mem_margin())
            if stop is not None:
                self._stop_early(c, seed, stop, live)

    def _stop_early(self, c: Candidate, seed: int, stop: Stop, live: dict) -> None:
        st = self.state
        saved = 0.0
        with st.transaction():
            for cid in (c.id, c.parent_id or ROOT_ID):
                entry = self._inflight.pop((cid, seed), None)
                if entry is None:
                    continue
                self.arena.cancel(cid, seed)
                st.cancel_evaluation(entry[0], cid, f"called off: {c.id} was stopped early by the cascade")
                run = live.get((cid, seed))
                saved += (1.0 - (run.points[-1].fraction if run and run.points else 0.0)) * self.cfg.budget_s
            st.set_status(c.id, Status.REJECTED, stop.reason)
            st.event("cascade_stopped", f"{c.id} {stop.reason}", c.generation, c.id, seed=seed,
                     fraction=stop.fraction, saved_budget_s=round(saved, 3))

    # -- the schedule -------------------------------------------------------------------------------

    def _complete(self, g: int) -> bool:
        if any(tag == g for _eid, tag in self._inflight.values()) or self._needed_runs(g):
            return False
        if g == 0:
            return True
        children = self.state.children(g)
        if any(c.status in (Status.PROPOSED, Status.RUNNING) for c in children):
            return False
        return len(children) >= self.cfg.population

    def run(self) -> LoopOutcome:
        self._recover()
        self.state.set_meta("personas", self.personas)
        reason = ""
        try:
            while True:
                self._drain_llm_calls()
                self._collect_proposals()
                v = self.version()
                g = v + 1
                stop = self.stop_reason(v)
                if stop:
                    reason = stop
                    break
                if g >= 1:
                    self.planner.plan(g, self.cfg.population)
                next_ok = (g + 1 <= self.cfg.generations and self.lookahead > 0
                           and all(c.commit is not None or c.status != Status.PROPOSED
                                   for c in self.state.children(g)))
                if next_ok:  # generation 1's while the root runs
                    self.planner.plan(g + 1, self.lookahead)
                self._dispatch_proposals()
                self._dispatch_runs(g)
                if not self._proposing and self._complete(g):
                    self.decisions.finalize(g)
                    continue
                if not self._inflight and not self._proposing:
                    raise LoopError(f"generation {g} cannot progress: nothing to propose or run "
                                    "(this is a bug; the store is intact, --resume retries)")
                if not self._inflight:
                    wait(list(self._proposing.values()), timeout=0.5, return_when=FIRST_COMPLETED)
                    continue
                for r in self.arena.poll(0.01 if self._proposing else 0.5):
                    self._record(r)
                self._check_cascade()
        finally:
            self._shutdown()
        v = self.version()
        rec = self.state.generation(v) if v >= 0 else None
        return LoopOutcome(v, reason, rec.archive if rec else [], rec.hypervolume if rec else 0.0)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for cid in sorted({cid for cid, _seed in self._inflight}):
            self.arena.cancel(cid)
        self._inflight.clear()
        self._drain_llm_calls()
        # runs still in flight (next generation's early children) are redone on --resume
        self.state.interrupt_running()
