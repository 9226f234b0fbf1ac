"""Run state: the loop's view of the store, kept current because every write goes through it.

Flow: the loop, the planner and the decisions read candidates, finished evaluations,
archive versions and run settings from a `RunState` and write through its methods; each
write goes to the store first and then updates the mirror from what the store now holds,
so there is no manual refresh to forget and a resumed run reads exactly what an
uninterrupted one would have. It also hands out the `Scorer` over the same mirror.

What it does not do: decide or schedule. Which runs to ask for and what enters the
archive are population.decisions' business; when to do what is the loop's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from arena.records import RunResult, Status
from population import noise
from population.scoring import ROOT_ID, Scorer
from population.store import Candidate, Evaluation, GenerationRecord, LLMCall, Purpose, Store

log = logging.getLogger(__name__)


class RunState:
    """The mirror of one run's store (the loop's thread is its only user)."""

    def __init__(self, store: Store, epsilon_scale: float, on_event: Callable[[str], None] | None = None):
        self.store = store
        self.epsilon_scale = epsilon_scale
        self.on_event = on_event or (lambda msg: None)
        self.cands: dict[str, Candidate] = {}
        self.evals: dict[str, dict[int, Evaluation]] = {}
        self.gens: dict[int, GenerationRecord] = {}
        self._meta: dict[str, Any] = {}
        self._scorer: Scorer | None = None
        self.reload()

    def reload(self) -> None:
        self.cands = {c.id: c for c in self.store.candidates()}
        self.evals = {}
        for e in self.store.evaluations():
            self.evals.setdefault(e.candidate_id, {})[e.seed] = e
        self.gens = {g.generation: g for g in self.store.generations()}
        self._meta = {}
        self._scorer = None

    # -- reading ------------------------------------------------------------------------------

    def version(self) -> int:
        """The newest archive version (finished generation), -1 before the root is measured."""
        return max(self.gens, default=-1)

    def generation(self, v: int) -> GenerationRecord:
        return self.gens[v]

    def children(self, g: int) -> list[Candidate]:
        return sorted((c for c in self.cands.values() if c.generation == g and c.id != ROOT_ID),
                      key=lambda c: c.idx)

    def in_plan_order(self) -> list[Candidate]:
        return sorted(self.cands.values(), key=lambda c: (c.generation, c.idx))

    def meta(self, key: str, default: Any = None) -> Any:
        if key not in self._meta:
            self._meta[key] = self.store.get_meta(key)
        value = self._meta[key]
        return default if value is None else value

    def floor(self) -> noise.NoiseFloor | None:
        f = self.meta("noise_floor")
        return None if f is None else noise.NoiseFloor(float(f["val_std"]), float(f["mem_std"]), int(f["n_seeds"]),
                                                       float(f["val_mean"]), float(f["mem_mean"]))

    def scorer(self) -> Scorer:
        """The run's `Scorer` over this mirror (rebuilt when the run's settings or the
        finished version change, so its caches only hold final answers)."""
        s = self._scorer
        if s is None or s.finished_version != self.version():
            s = Scorer(self.cands, self.evals, self.meta("device_type"), self.floor(), self.version(),
                       self.epsilon_scale)
            self._scorer = s
        return s

    def own_done(self, cid: str) -> bool:
        """Whether the candidate has a successful run for itself (it is then 'evaluated')."""
        return any(e.ok for e in self.evals.get(cid, {}).values() if e.purpose != Purpose.PAIR)

    # -- writing (store first, then the mirror from the store) ---------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.store.transaction():
            yield

    def event(self, kind: str, message: str, generation: int | None = None,
              candidate_id: str | None = None, **payload: Any) -> None:
        self.store.add_event(kind, message, generation, candidate_id, payload)
        log.info("%s: %s", kind, message)
        self.on_event(message)

    def set_meta(self, key: str, value: Any) -> None:
        self.store.set_meta(key, value)
        self._meta[key] = value
        self._scorer = None

    def add_candidate(self, c: Candidate) -> Candidate:
        self.store.add_candidate(c)
        return self._refresh(c.id)

    def set_status(self, cid: str, status: Status, message: str | None = None) -> Candidate:
        self.store.set_status(cid, status, message)
        return self._refresh(cid)

    def record_proposal(self, cid: str, commit: str | None, model: str, hypothesis: str,
                        edit_format: str) -> Candidate:
        self.store.record_proposal(cid, commit, model, hypothesis, edit_format)
        return self._refresh(cid)

    def record_diff_hash(self, cid: str, digest: str) -> Candidate:
        self.store.record_diff_hash(cid, digest)
        return self._refresh(cid)

    def known_diffs(self) -> dict[str, str | None]:
        return self.store.known_diffs()

    def start_evaluation(self, cid: str, seed: int, generation: int, purpose: Purpose) -> int:
        return self.store.start_evaluation(cid, seed, generation, purpose)

    def finish_evaluation(self, eval_id: int, result: RunResult) -> Evaluation:
        self.store.finish_evaluation(eval_id, result)
        self._refresh_evals(result.candidate_id)
        return self.evals[result.candidate_id][result.seed]

    def cancel_evaluation(self, eval_id: int, cid: str, reason: str) -> None:
        self.store.cancel_evaluation(eval_id, reason)
        self._refresh_evals(cid)

    def interrupt_evaluation(self, eval_id: int, reason: str) -> None:
        self.store.interrupt_evaluation(eval_id, reason)

    def interrupt_running(self) -> list[Evaluation]:
        return self.store.interrupt_running()

    def add_llm_call(self, call: LLMCall) -> None:
        self.store.add_llm_call(call)

    def finish_generation(self, rec: GenerationRecord) -> None:
        self.store.finish_generation(rec)
        self.gens[rec.generation] = self.store.generations()[-1]

    def _refresh(self, cid: str) -> Candidate:
        c = self.store.candidate(cid)
        self.cands[cid] = c
        return c

    def _refresh_evals(self, cid: str) -> None:
        self.evals[cid] = {e.seed: e for e in self.store.evaluations(cid)}
