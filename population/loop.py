"""The generation loop: program.md + archive -> proposers -> arena -> store -> archive.

Flow of one generation g (generation 0 measures the root on `seeds.root` seeds, which
gives the noise floor):
1. plan: for each of `population` children pick a persona (bandit) and a parent
   (archive, with diversity; a persona that prefers "best" mostly gets the lowest
   val_bpb), both from the archive version the child sees; a crossover persona sometimes
   gets two members that share an ancestor (merged by git, agents.crossover), a persona
   that prefers "failed" gets a recent failure to repair (measured against its parent);
2. propose: proposer calls run in worker threads while the devices are busy; the first
   `lookahead` children of the next generation are proposed early, from the archive
   before the current generation (each child records the `archive_version` it saw);
3. commit each proposal to git, refuse no-ops and duplicates (arena.guards);
4. evaluate through the arena on seeds the loop chooses; racing adds seeds to children
   that still look better than their parent, pairing adds the same seeds to the parent;
   every `seeds.rescore_every` generations archive members get fresh seeds;
5. finalize: paired tests + Benjamini-Hochberg decide confirmed/rejected, re-scored
   members that lost their edge fall out, and the archive version g is written with its
   hypervolume (one transaction).

Every decision is a pure function of the store (with random draws seeded by run seed,
generation and child index), so a loop killed at any moment and started again on the
same store continues where it was: finished evaluations are kept, runs that were in
flight are redone, and the archive is the one an uninterrupted run would have reached
with the same results.

What it does not do: train, evaluate or talk to an LLM itself (the arena and the
proposer do), or print anything (the CLI does).
"""

from __future__ import annotations

import logging
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from agents.novelty import NoveltyIndex
from agents.proposal import (
    ArchiveRow,
    Failure,
    InvalidEdit,
    LineageStep,
    ProposalContext,
    Proposer,
)
from arena.records import FAILURES, RunRequest, RunResult, Status
from population import memory, noise, telemetry
from population.archive import Constraints, ParetoArchive, Point
from population.bandit import PersonaStats, choose_persona
from population.program import ProgramConfig
from population.selection import select_for
from population.store import Candidate, Evaluation, GenerationRecord, LLMCall, Store

log = logging.getLogger(__name__)

ROOT_ID = "root"
OWN_PURPOSES = ("root", "initial", "race")


class Arena(Protocol):
    def submit(self, req: RunRequest) -> Any: ...
    def poll(self, timeout: float = ...) -> list[RunResult]: ...
    def cancel(self, candidate_id: str) -> Any: ...
    def free_slots(self) -> int: ...
    def close(self) -> None: ...


class Repo(Protocol):
    @property
    def root_commit(self) -> str: ...
    def read_file(self, commit: str, path: str) -> str: ...
    def commit_candidate(self, parent: str, train_py: str, message: str) -> str: ...


class LoopError(Exception):
    """The loop cannot go on (the message says why)."""


class RootFailed(LoopError):
    """The unmodified train.py failed: nothing can be compared with it."""


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
    preference ("best" or "frontier", as agents.personas says); `guard(repo, commit,
    known_hashes) -> (ok, message, hash)` refuses no-ops and duplicates (default:
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
        self.personas = sorted(personas)
        self.preferences = preferences or {}
        self.crossover_personas = crossover_personas or set()
        self.weights = weights or {}
        self.guard = guard
        self.on_event = on_event or (lambda msg: None)
        self.clock = clock
        self.race = noise.RacePolicy(config.initial_seeds, config.seeds_per_round,
                                     config.max_seeds, config.race_stop_p, config.race_continue_p)
        self.constraints = Constraints(config.max_peak_mem_mb, config.max_val_bpb)
        stored_lookahead = store.get_meta("lookahead")
        if stored_lookahead is None:
            stored_lookahead = min(slots, config.population) if config.lookahead < 0 else config.lookahead
            store.set_meta("lookahead", stored_lookahead)
        self.lookahead = int(stored_lookahead)
        self._cands: dict[str, Candidate] = {}
        self._evals: dict[str, dict[int, Evaluation]] = {}
        self._inflight: dict[tuple[str, int], tuple[int, int]] = {}  # (candidate, seed) -> (evaluation id, tag)
        self._meta: dict[str, Any] = {}
        self._paired_cache: dict[tuple, noise.PairedResult] = {}
        self._pooled_cache: dict[int, noise.PooledNoise | None] = {}
        self._proposing: dict[str, Future] = {}
        self._llm_calls: queue.Queue[LLMCall] = queue.Queue()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=config.proposal_workers, thread_name_prefix="propose")
        self._gen_cache: dict[int, GenerationRecord] = {}
        self._files: dict[str, str] = {}

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
            self.store.add_llm_call(call)

    # -- state ---------------------------------------------------------------------------

    def _event(self, kind: str, message: str, generation: int | None = None,
               candidate_id: str | None = None, **payload: Any) -> None:
        self.store.add_event(kind, message, generation, candidate_id, payload)
        log.info("%s: %s", kind, message)
        self.on_event(message)

    def _refresh(self, cid: str) -> Candidate:
        c = self.store.candidate(cid)
        self._cands[cid] = c
        return c

    def _load(self) -> None:
        self._cands = {c.id: c for c in self.store.candidates()}
        self._evals = {}
        for e in self.store.evaluations():
            self._evals.setdefault(e.candidate_id, {})[e.seed] = e

    def _recover(self) -> None:
        """Start (or restart) from the store: runs a dead process left in flight are
        marked interrupted and will be redone; candidates caught mid-run go back to the
        state their finished evaluations justify."""
        for e in self.store.interrupt_running():
            self._event("interrupted", f"run of {e.candidate_id} on seed {e.seed} was interrupted; redoing it",
                        e.generation, e.candidate_id, seed=e.seed)
        self._load()
        for c in list(self._cands.values()):
            if c.status == Status.RUNNING:
                done = any(e.ok for e in self._evals.get(c.id, {}).values() if e.purpose in OWN_PURPOSES)
                self.store.set_status(c.id, Status.EVALUATED if done else Status.PROPOSED)
                self._refresh(c.id)
        if ROOT_ID not in self._cands:
            self.store.add_candidate(Candidate(
                id=ROOT_ID, generation=0, idx=0, parent_id=None, persona="root",
                status=Status.PROPOSED, archive_version=-1, commit=self.repo.root_commit,
                hypothesis="the unmodified train.py", model="",
            ))
            self._refresh(ROOT_ID)

    def version(self) -> int:
        return self.store.last_generation()

    def _generation(self, v: int) -> GenerationRecord:
        if v not in self._gen_cache:
            for rec in self.store.generations():
                self._gen_cache[rec.generation] = rec
        return self._gen_cache[v]

    def _train_py(self, commit: str) -> str:
        if commit not in self._files:
            self._files[commit] = self.repo.read_file(commit, "train.py")
        return self._files[commit]

    # -- measurements -----------------------------------------------------------------------

    def _get_meta(self, key: str) -> Any:
        if key not in self._meta:
            value = self.store.get_meta(key)
            if value is None:
                return None
            self._meta[key] = value
        return self._meta[key]

    def _set_meta(self, key: str, value: Any) -> None:
        self.store.set_meta(key, value)
        self._meta[key] = value

    def _primary_device(self) -> str | None:
        return self._get_meta("device_type")

    def _measurements(self, cid: str, purposes: tuple[str, ...] | None = None,
                      max_generation: int | None = None) -> dict[int, tuple[float, float]]:
        dev = self._primary_device()
        out = {}
        for seed, e in self._evals.get(cid, {}).items():
            if not e.ok or e.peak_mem_mb is None:
                continue
            if dev is not None and e.device_type != dev:
                continue
            if purposes is not None and e.purpose not in purposes:
                continue
            if max_generation is not None and e.generation > max_generation:
                continue
            out[seed] = (float(e.val_bpb), float(e.peak_mem_mb))  # type: ignore[arg-type]
        return out

    def _score_seeds(self, cid: str, v: int) -> dict[int, tuple[float, float]]:
        """The seeds that count for a candidate's mean at archive version v: its own
        runs plus re-scoring runs up to v (pairing runs made for a child do not count,
        so the mean does not depend on which child asked first)."""
        own = self._measurements(cid, OWN_PURPOSES)
        own.update(self._measurements(cid, ("rescore",), max_generation=v))
        return own

    def _point(self, cid: str, v: int) -> Point | None:
        m = self._score_seeds(cid, v)
        if not m:
            return None
        vals = [x[0] for x in m.values()]
        mems = [x[1] for x in m.values()]
        return Point(cid, statistics.fmean(vals), statistics.fmean(mems),
                     statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))

    def _paired(self, child_seeds: dict[int, tuple[float, float]], parent_id: str,
                pooled: noise.PooledNoise | None = None) -> noise.PairedResult:
        parent = self._measurements(parent_id)
        key = (tuple(sorted(child_seeds.items())), tuple(sorted((s, parent[s]) for s in child_seeds if s in parent)),
               pooled)
        hit = self._paired_cache.get(key)
        if hit is None:
            hit = noise.paired_comparison(child_seeds, parent, self._eps(), self._mem_margin(parent_id), pooled)
            self._paired_cache[key] = hit
        return hit

    def _pooled(self, v: int) -> noise.PooledNoise | None:
        """The pooled difference noise of every child of generations 1..v. Only asked for
        finished versions (a child uses the archive version it saw), so it is fixed and
        decisions never depend on timing."""
        if v > self.version():
            raise LoopError(f"pooled noise asked for unfinished archive version {v}")
        if v not in self._pooled_cache:
            pairs = []
            for c in self._cands.values():
                if c.id == ROOT_ID or not 1 <= c.generation <= v or c.parent_id is None:
                    continue
                mine = self._measurements(c.id, OWN_PURPOSES)
                theirs = self._measurements(c.parent_id)
                seeds = sorted(set(mine) & set(theirs))
                pairs.append(([mine[s][0] - theirs[s][0] for s in seeds],
                              [mine[s][1] - theirs[s][1] for s in seeds]))
            self._pooled_cache[v] = noise.pooled_noise(pairs)
        return self._pooled_cache[v]

    def _eps(self) -> tuple[float, float]:
        eps = self._get_meta("epsilon")
        return (float(eps[0]), float(eps[1]))

    def _mem_margin(self, parent_id: str) -> float:
        return 0.5 * self._eps()[1]

    # -- which runs are needed ------------------------------------------------------------------

    def _race_seeds(self, c: Candidate) -> list[int]:
        """The seeds child `c` should end up with, given what is measured so far."""
        n = self.race.initial
        while True:
            seeds = [noise.race_seed(k) for k in range(n)]
            mine = self._evals.get(c.id, {})
            parent = self._evals.get(c.parent_id or "", {})
            if not all(s in mine and mine[s].finished for s in seeds):
                return seeds
            if not all(s in parent and parent[s].finished for s in seeds):
                return seeds
            result = self._paired(self._measurements(c.id, OWN_PURPOSES), c.parent_id or "",
                                  self._pooled(c.archive_version))
            nxt = self.race.next_count(n, result)
            if nxt == n:
                return seeds
            n = nxt

    def _rescore_members(self, g: int) -> list[str]:
        """Archive members of version g-1 that are re-scored during generation g."""
        if g < 1 or self.cfg.rescore_every <= 0 or self.cfg.rescore_seeds <= 0 or g % self.cfg.rescore_every:
            return []
        return [row["candidate_id"] for row in self._generation(g - 1).archive]

    def _needed_runs(self, g: int, children_only: bool = False) -> list[tuple[str, int, str, int]]:
        """(candidate, seed, purpose, generation tag) of runs still to submit for gen g."""
        out: list[tuple[str, int, str, int]] = []
        seen: set[tuple[str, int]] = set()

        def need(cid: str, seed: int, purpose: str) -> None:
            e = self._evals.get(cid, {}).get(seed)
            if (cid, seed) in seen or (cid, seed) in self._inflight or (e is not None and e.finished):
                return
            seen.add((cid, seed))
            out.append((cid, seed, purpose, g))

        if g == 0:
            for k in range(self.cfg.root_seeds):
                need(ROOT_ID, noise.race_seed(k), "root")
            return out
        for c in self._children(g):
            if c.commit is None or c.status not in (Status.PROPOSED, Status.RUNNING, Status.EVALUATED):
                continue
            for s in self._race_seeds(c):
                need(c.parent_id or "", s, "pair")
                need(c.id, s, "initial" if s < self.race.initial else "race")
        for cid in ([] if children_only else self._rescore_members(g)):
            parent_id = self._cands[cid].parent_id
            for j in range(self.cfg.rescore_seeds):
                s = noise.rescore_seed(g, j, self.cfg.rescore_seeds)
                need(cid, s, "rescore")
                if parent_id is not None:
                    need(parent_id, s, "pair")
        return out

    def _children(self, g: int) -> list[Candidate]:
        return sorted((c for c in self._cands.values() if c.generation == g and c.id != ROOT_ID),
                      key=lambda c: c.idx)

    # -- planning ------------------------------------------------------------------------------

    def _sees(self, g: int, idx: int) -> int:
        """The archive version child (g, idx) is planned from."""
        return g - 2 if (g >= 2 and idx < self.lookahead) else g - 1

    def _plan(self, g: int, upto: int) -> None:
        for idx in range(upto):
            cid = f"g{g:03d}c{idx:02d}"
            if cid in self._cands:
                continue
            v = self._sees(g, idx)
            persona = choose_persona(self._persona_stats(v), random.Random(f"{self.cfg.seed}:persona:{g}:{idx}"),
                                     self.cfg.bandit_floor, weights=self.weights)
            members = [Point(r["candidate_id"], r["val_bpb"], r["peak_mem_mb"], r.get("val_std", 0.0),
                             r.get("n_seeds", 1)) for r in self._generation(v).archive]
            ref = tuple(self._get_meta("reference"))
            rng = random.Random(f"{self.cfg.seed}:parent:{g}:{idx}")
            prefers = self.preferences.get(persona, "frontier")
            parent_id = select_for(prefers, members, ref, rng, self.cfg.parent_floor).candidate_id  # type: ignore[arg-type]
            second: str | None = None
            repair: str | None = None
            if persona in self.crossover_personas and rng.random() < self.cfg.crossover_rate:
                pair = self._pick_pair(v, rng)
                if pair is not None:
                    parent_id, second = pair
            elif prefers == "failed":
                repair = self._repair_target(v)
                if repair is not None:
                    parent_id = self._cands[repair].parent_id or ROOT_ID
            with self.store.transaction():
                self.store.add_candidate(Candidate(
                    id=cid, generation=g, idx=idx, parent_id=parent_id, persona=persona,
                    status=Status.PROPOSED, archive_version=v, second_parent_id=second,
                ))
                if repair is not None:
                    self._set_meta(f"repair:{cid}", repair)
            self._refresh(cid)

    def _pick_pair(self, v: int, rng: random.Random) -> tuple[str, str] | None:
        """Two archive members of version v that share an ancestor (agents.crossover)."""
        from agents.crossover import pick_pair

        rows = self._archive_rows(v)
        by_commit = {r.commit: r.candidate_id for r in rows}
        pair = pick_pair(rows, self.repo.lineage, rng)  # type: ignore[attr-defined]
        if pair is None:
            return None
        return by_commit[pair.first.commit], by_commit[pair.second.commit]

    def _repair_target(self, v: int) -> str | None:
        """The newest failed candidate (as of version v) with a commit that no earlier
        child was asked to repair."""
        statuses = self._generation(v).statuses
        taken = {self._get_meta(f"repair:{c.id}") for c in self._cands.values() if c.id != ROOT_ID}
        for c in sorted(self._cands.values(), key=lambda c: (c.generation, c.idx), reverse=True):
            st = statuses.get(c.id)
            if (st is not None and Status(st) in FAILURES and c.commit and c.id not in taken
                    and not c.message.startswith("duplicate")):
                return c.id
        return None

    def _persona_stats(self, v: int) -> dict[str, PersonaStats]:
        statuses = self._generation(v).statuses
        costs = self.store.cost_by_candidate()
        acc = {p: [0, 0, 0.0] for p in self.personas}
        for cid, st in statuses.items():
            c = self._cands.get(cid)
            if c is None or c.persona not in acc or cid == ROOT_ID:
                continue
            s = Status(st)
            if s in FAILURES or s in (Status.CONFIRMED, Status.REJECTED):
                acc[c.persona][0] += 1
                acc[c.persona][1] += int(s == Status.CONFIRMED)
                acc[c.persona][2] += costs.get(cid, 0.0)
        return {p: PersonaStats(int(t), int(s), float(cost)) for p, (t, s, cost) in acc.items()}

    # -- proposing ------------------------------------------------------------------------------

    def _tried(self, c: Candidate) -> list[str] | None:
        """Hypotheses of candidates with the same parent planned before c; None while one
        of them is still being proposed (c waits, so its context is deterministic)."""
        out = []
        for o in sorted(self._cands.values(), key=lambda o: (o.generation, o.idx)):
            if (o.generation, o.idx) >= (c.generation, c.idx) or o.parent_id != c.parent_id or o.id == ROOT_ID:
                continue
            if o.status == Status.PROPOSED and o.commit is None:
                return None
            if o.hypothesis:
                out.append(o.hypothesis)
        return out

    def _context(self, c: Candidate, tried: list[str]) -> ProposalContext:
        v = c.archive_version
        rec = self._generation(v)
        parent = self._cands[c.parent_id or ROOT_ID]
        lineage = []
        chain: list[Candidate] = []
        cur: Candidate | None = parent
        while cur is not None:
            chain.append(cur)
            cur = self._cands.get(cur.parent_id) if cur.parent_id else None
        for a in reversed(chain):
            p = self._point(a.id, v)
            delta = None
            if a.parent_id:
                delta = self._paired(self._measurements(a.id, OWN_PURPOSES), a.parent_id).mean_diff_val
            lineage.append(LineageStep(
                commit=a.commit or "", persona=a.persona, hypothesis=a.hypothesis,
                val_bpb=p.val_bpb if p else None, val_bpb_std=p.val_std if p else None,
                delta_vs_parent=delta, status=rec.statuses.get(a.id, a.status.value),
            ))
        archive = self._archive_rows(v)
        failures = []
        for o in sorted(self._cands.values(), key=lambda o: (o.generation, o.idx), reverse=True):
            st = rec.statuses.get(o.id)
            if st is not None and Status(st) in FAILURES:
                failures.append(Failure(o.id, o.persona, o.hypothesis, st, o.message[-2000:]))
            if len(failures) >= 8:
                break
        floor = self._get_meta("noise_floor") or {}
        repair_of = repair_py = None
        target = self._get_meta(f"repair:{c.id}")
        if target is not None:
            f = self._cands[target]
            repair_of = Failure(f.id, f.persona, f.hypothesis, rec.statuses.get(f.id, f.status.value), f.message[-2000:])
            repair_py = self._train_py(f.commit or "")
        second = self._cands[c.second_parent_id] if c.second_parent_id else None
        parent_runs = telemetry.candidate_telemetry(self.store, parent.id, self.cfg.budget_s)
        return ProposalContext(
            persona=c.persona, program=self.cfg.prose, parent_id=parent.id,
            parent_commit=parent.commit or "", parent_train_py=self._train_py(parent.commit or ""),
            lineage=lineage, archive=archive, failures=failures, tried=tried,
            noise_floor=floor.get("val_std"), repair_of=repair_of, repair_train_py=repair_py,
            second_parent_commit=second.commit if second else None,
            second_parent_train_py=self._train_py(second.commit or "") if second else None,
            memory=memory.digest(self.store, self._train_py, parent.id, as_of=v),
            telemetry=telemetry.render(parent_runs) if parent_runs else "",
            novelty=NoveltyIndex.build((o.id, self._train_py(o.commit), o.status.value)
                                       for o in self._cands.values() if o.commit),
        )

    def _archive_rows(self, v: int) -> list[ArchiveRow]:
        rows = []
        for r in self._generation(v).archive:
            m = self._cands[r["candidate_id"]]
            rows.append(ArchiveRow(m.id, m.commit or "", m.persona, m.hypothesis, r["val_bpb"],
                                   r.get("val_std", 0.0), r["peak_mem_mb"], r.get("n_seeds", 1)))
        return rows

    def _propose_job(self, cid: str, ctx: ProposalContext) -> Any:
        self._local.candidate_id = cid
        try:
            if ctx.second_parent_commit:
                from agents.crossover import CrossoverPair, crossover

                rows = {r.commit: r for r in self._archive_rows(self._cands[cid].archive_version)}
                pair = CrossoverPair(rows[ctx.parent_commit], rows[ctx.second_parent_commit], "", 0)
                return crossover(self.repo, pair, ctx.persona)  # type: ignore[arg-type]
            return self.proposer.propose(ctx)
        finally:
            self._local.candidate_id = None

    def _dispatch_proposals(self) -> None:
        waiting = [c for c in sorted(self._cands.values(), key=lambda c: (c.generation, c.idx))
                   if c.id != ROOT_ID and c.status == Status.PROPOSED and c.commit is None
                   and c.id not in self._proposing]
        for c in waiting:
            if len(self._proposing) >= self.cfg.proposal_workers:
                return
            tried = self._tried(c)
            if tried is None:
                continue
            ctx = self._context(c, tried)
            self._proposing[c.id] = self._pool.submit(self._propose_job, c.id, ctx)

    def _collect_proposals(self) -> None:
        """Commit finished proposals in plan order (gen, idx), so that the duplicate
        check sees the same earlier candidates whatever order the proposers finished in."""
        for c in sorted(self._cands.values(), key=lambda c: (c.generation, c.idx)):
            if c.id == ROOT_ID or c.status != Status.PROPOSED or c.commit is not None:
                continue
            fut = self._proposing.get(c.id)
            if fut is None or not fut.done():
                return
            cid = c.id
            del self._proposing[cid]
            answer = fut.result()  # a proposer's configuration error stops the run here
            self._drain_llm_calls()
            c = self._cands[cid]
            for refusal in getattr(answer, "refusals", ()):  # device time saved before the arena
                self._event("novelty_refused" if refusal.is_repeat else "preflight_refused",
                            f"{cid} ({c.persona}): {refusal.reason}", c.generation, cid, check=refusal.kind,
                            duplicate_of=refusal.duplicate_of, saved_runs=self.cfg.initial_seeds,
                            saved_budget_s=self.cfg.initial_seeds * self.cfg.budget_s)
            merge_commit = None
            if hasattr(answer, "merge_commit") and hasattr(answer, "outcome"):  # agents.crossover result
                answer, merge_commit = answer.outcome, answer.merge_commit
            if isinstance(answer, InvalidEdit):
                self.store.record_proposal(cid, None, answer.model, answer.hypothesis, "")  # type: ignore[arg-type]
                self.store.set_status(cid, Status.INVALID_EDIT, answer.reason)
                self._refresh(cid)
                self._event("invalid_edit", f"{cid} ({c.persona}): {answer.reason}", c.generation, cid)
                continue
            parent = self._cands[c.parent_id or ROOT_ID]
            message = (f"{c.persona}: {answer.hypothesis}\n\ncandidate: {cid}\nparent: {parent.id}\n"
                       f"model: {answer.model}\narchive_version: {c.archive_version}\n")
            if merge_commit is not None:
                sha = merge_commit  # the crossover's merge commit, with both parents
            else:
                sha = self.repo.commit_candidate(parent.commit or "", answer.train_py, message)
            self._files[sha] = answer.train_py
            with self.store.transaction():
                self.store.record_proposal(cid, sha, answer.model, answer.hypothesis, answer.edit_format)
                self._guard(self._refresh(cid))
            self._refresh(cid)

    def _guard(self, c: Candidate) -> None:
        known = set(self._get_meta("known_hashes") or [])
        ok, message, digest = self.guard(self.repo, c.commit or "", known)
        if digest:
            self._set_meta("known_hashes", sorted(known | {digest}))
        if not ok:
            self.store.set_status(c.id, Status.GUARD_REFUSED, message)
            self._event("guard_refused", f"{c.id} ({c.persona}): {message}", c.generation, c.id)
        else:
            self._event("proposed", f"{c.id} ({c.persona}) from {c.parent_id}: {c.hypothesis}", c.generation, c.id)

    # -- running ---------------------------------------------------------------------------------

    def _dispatch_runs(self, g: int) -> None:
        if self.arena.free_slots() <= 0:
            return
        needed = self._needed_runs(g)
        if not needed and g >= 1 and self.version() == g - 1:
            needed = self._needed_runs(g + 1, children_only=True)
        for cid, seed, purpose, tag in needed:
            if self.arena.free_slots() <= 0:
                return
            c = self._cands[cid]
            eval_id = self.store.start_evaluation(cid, seed, tag, purpose)
            self._inflight[(cid, seed)] = (eval_id, tag)
            if purpose in OWN_PURPOSES and c.status in (Status.PROPOSED, Status.EVALUATED):
                self.store.set_status(cid, Status.RUNNING)
                self._refresh(cid)
            self.arena.submit(RunRequest(cid, c.commit or "", seed, self.cfg.budget_s))

    def _record(self, r: RunResult) -> None:
        key = (r.candidate_id, r.seed)
        entry = self._inflight.pop(key, None)
        if entry is None:
            log.debug("result for %s seed %s arrived after its run was called off; ignored",
                      r.candidate_id, r.seed)
            return
        if r.status != Status.EVALUATED and not r.status.is_failure():
            # no outcome (the arena cancelled it, e.g. while shutting down): run it again
            self.store.interrupt_evaluation(entry[0], r.message or f"returned as {r.status.value}")
            c = self._cands[r.candidate_id]
            if c.status == Status.RUNNING and not any(k == c.id for k, _ in self._inflight):
                done = any(e.ok for e in self._evals.get(c.id, {}).values() if e.purpose in OWN_PURPOSES)
                self.store.set_status(c.id, Status.EVALUATED if done else Status.PROPOSED)
                self._refresh(c.id)
            self._event("interrupted", f"run of {c.id} on seed {r.seed} came back without an outcome; "
                        "it will be redone", None, c.id)
            return
        self.store.finish_evaluation(entry[0], r)
        evals = {e.seed: e for e in self.store.evaluations(r.candidate_id)}
        self._evals[r.candidate_id] = evals
        e = evals[r.seed]
        c = self._cands[r.candidate_id]
        own = e.purpose in OWN_PURPOSES
        if r.status.is_failure():
            if c.id == ROOT_ID:
                raise RootFailed(f"the root train.py failed on seed {r.seed} ({r.status.value}): "
                                 f"{r.message.strip().splitlines()[-1] if r.message.strip() else ''}")
            if own:
                self._cancel(c.id)
                self.store.set_status(c.id, r.status, r.message)
                self._refresh(c.id)
                self._event(r.status.value, f"{c.id} {r.status.value} on seed {r.seed}: "
                            f"{(r.message.strip().splitlines() or [''])[-1][:200]}", e.generation, c.id)
            else:
                self._event("run_failed", f"{e.purpose} run of {c.id} on seed {r.seed}: {r.status.value}",
                            e.generation, c.id)
            return
        if own and not any(k == c.id for k, _ in self._inflight) and c.status == Status.RUNNING:
            self.store.set_status(c.id, Status.EVALUATED)
            self._refresh(c.id)
        self._event("evaluated", f"{c.id} seed {r.seed}: val_bpb {r.val_bpb:.4f} mem {r.peak_mem_mb:.0f} MB"
                    if r.val_bpb is not None and r.peak_mem_mb is not None else f"{c.id} seed {r.seed}",
                    e.generation, c.id)

    def _cancel(self, cid: str) -> None:
        self.arena.cancel(cid)
        for (k, seed), (eval_id, _tag) in list(self._inflight.items()):
            if k == cid:
                del self._inflight[(k, seed)]
                self.store.cancel_evaluation(eval_id, f"cancelled: {cid} already failed")
                self._evals.setdefault(cid, {})

    # -- finalizing ------------------------------------------------------------------------------

    def _complete(self, g: int) -> bool:
        if any(tag == g for _eid, tag in self._inflight.values()):
            return False
        if self._needed_runs(g):
            return False
        if g == 0:
            return True
        for c in self._children(g):
            if c.status in FAILURES:
                continue
            if c.status == Status.PROPOSED or c.status == Status.RUNNING:
                return False
        return len(self._children(g)) >= self.cfg.population

    def _finalize(self, g: int) -> None:
        with self.store.transaction():
            if g == 0:
                self._finalize_root()
            else:
                self._decide_children(g)
                self._rescore(g)
            points = [p for p in (self._point(c.id, g) for c in self._cands.values()
                                  if c.status == Status.CONFIRMED) if p is not None]
            ref = tuple(self._get_meta("reference"))
            archive = ParetoArchive.build(points, self._eps(), ref, self.constraints)  # type: ignore[arg-type]
            if not archive.members:
                root = self._point(ROOT_ID, g)
                assert root is not None
                archive.members = [root]  # the root stays a parent even when a constraint excludes it
            hv = archive.hypervolume()
            rows = [{"candidate_id": p.candidate_id, "val_bpb": p.val_bpb, "peak_mem_mb": p.peak_mem_mb,
                     "val_std": p.val_std, "n_seeds": p.n_seeds} for p in archive.members]
            statuses = {c.id: c.status.value for c in self._cands.values() if c.generation <= g}
            counts: dict[str, int] = {}
            for c in self._children(g):
                counts[c.status.value] = counts.get(c.status.value, 0) + 1
            summary = {"counts": counts, "n_evaluations": sum(len(v) for v in self._evals.values()),
                       "cost_usd": self.store.total_cost(), "epsilon": list(self._eps())}
            self.store.finish_generation(GenerationRecord(g, time.time(), hv, rows, statuses, summary))
            self._event("generation", f"generation {g} done: archive {len(rows)}, hypervolume {hv:.5g}, "
                        f"best val_bpb {min(r['val_bpb'] for r in rows):.4f}", g)
        self._gen_cache.pop(g, None)

    def _finalize_root(self) -> None:
        m = self._measurements(ROOT_ID)
        evals = [e for e in self._evals.get(ROOT_ID, {}).values() if e.ok]
        if self._get_meta("device_type") is None and evals:
            self._set_meta("device_type", evals[0].device_type)
            m = self._measurements(ROOT_ID)
        if len(m) < 2:
            raise RootFailed("the root needs at least 2 successful runs for the noise floor")
        floor = noise.noise_floor(list(m.values()))
        eps = floor.epsilon(self.cfg.epsilon_scale)
        ref_mem = self.cfg.max_peak_mem_mb or 4.0 * floor.mem_mean
        ref = (floor.val_mean * 1.25, max(ref_mem, floor.mem_mean * 1.01))
        self._set_meta("noise_floor", {"val_std": floor.val_std, "mem_std": floor.mem_std,
                                            "n_seeds": floor.n_seeds, "val_mean": floor.val_mean,
                                            "mem_mean": floor.mem_mean})
        self._set_meta("epsilon", list(eps))
        self._set_meta("reference", list(ref))
        self.store.set_status(ROOT_ID, Status.EVALUATED)
        self.store.set_status(ROOT_ID, Status.CONFIRMED, "root")
        self._refresh(ROOT_ID)
        self._event("noise_floor", f"noise floor: val_bpb std {floor.val_std:.5f} over {floor.n_seeds} seeds, "
                    f"epsilon {eps[0]:.5f} / {eps[1]:.1f} MB", 0)

    def _decide_children(self, g: int) -> None:
        pvals: dict[str, float] = {}
        results: dict[str, noise.PairedResult] = {}
        for c in self._children(g):
            if c.status != Status.EVALUATED:
                continue
            res = self._paired(self._measurements(c.id, OWN_PURPOSES), c.parent_id or "",
                               self._pooled(c.archive_version))
            results[c.id] = res
            p = self._point(c.id, g)
            violation = self.constraints.violation(p) if p else "no successful run"
            if violation:
                self.store.set_status(c.id, Status.REJECTED, violation)
                continue
            pvals[c.id] = res.p
        accepted = noise.benjamini_hochberg(pvals, self.cfg.fdr)
        # a child better than its parent still has to earn a place on the front
        pool = [p for p in (self._point(c.id, g) for c in self._cands.values()
                            if c.status == Status.CONFIRMED) if p is not None]
        pool += [p for p in (self._point(cid, g) for cid in sorted(accepted)) if p is not None]
        front = set(ParetoArchive.build(pool, self._eps(), tuple(self._get_meta("reference")),  # type: ignore[arg-type]
                                        self.constraints).ids())
        for cid in pvals:
            res = results[cid]
            why = (f"vs parent over {res.n} seeds: d_val {res.mean_diff_val:+.5f}, d_mem "
                   f"{res.mean_diff_mem:+.1f} MB, p {res.p:.3g}")
            if cid in accepted and cid in front:
                self.store.set_status(cid, Status.CONFIRMED, "confirmed " + why)
                self._event("confirmed", f"{cid} confirmed: {why}", g, cid)
            elif cid in accepted:
                self.store.set_status(cid, Status.REJECTED, "better than its parent but epsilon-dominated "
                                      "by the archive " + why)
            else:
                self.store.set_status(cid, Status.REJECTED, "not better " + why)
            self._refresh(cid)

    def _rescore(self, g: int) -> None:
        for cid in self._rescore_members(g):
            c = self._cands[cid]
            if cid == ROOT_ID or c.status != Status.CONFIRMED:
                continue
            seeds = [noise.rescore_seed(g, j, self.cfg.rescore_seeds) for j in range(self.cfg.rescore_seeds)]
            failed = [s for s in seeds if s in self._evals.get(cid, {}) and not self._evals[cid][s].ok]
            if failed:
                self.store.set_status(cid, Status.REJECTED, f"failed on re-scoring seed {failed[0]}")
                self._event("fell_out", f"{cid} failed on re-scoring seed {failed[0]}", g, cid)
            else:
                res = self._paired(self._score_seeds(cid, g), c.parent_id or "", self._pooled(g - 1))
                if res.p > self.cfg.fdr:
                    self.store.set_status(cid, Status.REJECTED, f"fell out on re-scoring: p {res.p:.3g} over {res.n} seeds")
                    self._event("fell_out", f"{cid} fell out on re-scoring (p {res.p:.3g}, {res.n} seeds)", g, cid)
            self._refresh(cid)

    # -- stopping -----------------------------------------------------------------------------------

    def stop_reason(self, v: int) -> str | None:
        if v < 0:
            return None
        if v >= self.cfg.generations:
            return f"reached {self.cfg.generations} generations"
        rec = self._generation(v)
        best = min(r["val_bpb"] for r in rec.archive)
        if self.cfg.target_val_bpb is not None and best <= self.cfg.target_val_bpb:
            return f"reached target val_bpb {self.cfg.target_val_bpb} (best {best:.4f})"
        if self.cfg.max_cost_usd is not None and self.store.total_cost() >= self.cfg.max_cost_usd:
            return f"spent the maximum cost {self.cfg.max_cost_usd} USD"
        if self.cfg.max_hours is not None:
            sessions = self.store.sessions()
            start = sessions[0]["started_at"] if sessions else self.clock()
            if (self.clock() - start) / 3600.0 >= self.cfg.max_hours:
                return f"ran the maximum {self.cfg.max_hours} hours"
        return None

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> LoopOutcome:
        self._recover()
        self.store.set_meta("personas", self.personas)
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
                    self._plan(g, self.cfg.population)
                    next_ok = (g + 1 <= self.cfg.generations and self.lookahead > 0
                               and all(c.commit is not None or c.status != Status.PROPOSED for c in self._children(g)))
                    if next_ok:
                        self._plan(g + 1, self.lookahead)
                self._dispatch_proposals()
                self._dispatch_runs(g)
                if not self._proposing and self._complete(g):
                    self._finalize(g)
                    continue
                if not self._inflight and not self._proposing:
                    if self._complete(g):
                        continue
                    raise LoopError(f"generation {g} cannot progress: nothing to propose or run "
                                    "(this is a bug; the store is intact, --resume retries)")
                timeout = 0.01 if self._proposing else 0.5
                if not self._inflight:
                    self._wait_proposals(timeout)
                    continue
                for r in self.arena.poll(timeout):
                    self._record(r)
        finally:
            self._shutdown()
        v = self.version()
        rec = self._generation(v) if v >= 0 else None
        return LoopOutcome(v, reason, rec.archive if rec else [], rec.hypervolume if rec else 0.0)

    def _wait_proposals(self, timeout: float) -> None:
        futures = list(self._proposing.values())
        if futures:
            from concurrent.futures import FIRST_COMPLETED, wait
            wait(futures, timeout=max(timeout, 0.5), return_when=FIRST_COMPLETED)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for cid in sorted({cid for cid, _seed in self._inflight}):
            self.arena.cancel(cid)
        self._inflight.clear()
        self._drain_llm_calls()
        # runs still in flight (next generation's early children) are redone on --resume
        self.store.interrupt_running()
