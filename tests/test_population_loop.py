"""The generation loop on the simulated arena: real git, real SQLite, no training."""

from __future__ import annotations

import dataclasses
import threading

import litellm
import pytest

from agents.llm import LLMCallRecord
from agents.proposal import InvalidEdit, Proposal, ProposalContext
from arena.records import FAILURES, RunOutcome, Status
from population.loop import ROOT_ID, LoopError, RootFailed
from population.program import ProgramConfig
from population.simulated import KnobProposer, Landscape, read_knobs, set_knob, simulated_loop


def _run(tmp_path, cfg, **kw):
    loop, store, repo, arena = simulated_loop(tmp_path / "run", cfg, **kw)
    try:
        outcome = loop.run()
    finally:
        arena.close()
    return outcome, store, repo, loop


def test_generations_run_end_to_end_with_paired_seeds_and_lineage_in_git(tmp_path):
    cfg = ProgramConfig(generations=3, population=4, rescore_every=2, rescore_seeds=1)
    outcome, store, repo, _ = _run(tmp_path, cfg, slots=2)
    assert outcome.stop_reason == "reached 3 generations"
    gens = store.generations()
    assert [g.generation for g in gens] == [0, 1, 2, 3]
    assert all(g.archive and g.hypervolume > 0 for g in gens)
    assert store.get_meta("noise_floor")["n_seeds"] == cfg.root_seeds
    cands = {c.id: c for c in store.candidates()}
    assert len(cands) == 1 + 3 * 4
    for c in cands.values():
        if c.id == ROOT_ID:
            continue
        # a child is a git commit on top of its parent's commit
        assert repo.parents(c.commit) == [cands[c.parent_id].commit]
        # the first `lookahead` (= slots) children were planned from an older archive
        # (generation 1's from version -1: the root before its noise floor is measured)
        expected = c.generation - 2 if c.idx < 2 else c.generation - 1
        assert c.archive_version == expected
        if c.status in (Status.CONFIRMED, Status.REJECTED):
            mine = {e.seed for e in store.evaluations(c.id) if e.purpose in ("initial", "race")}
            assert len(mine) >= 1 and all(s // 1000 == c.generation for s in mine)  # fresh seeds each generation
            theirs = {e.seed for e in store.evaluations(c.parent_id)}
            assert len(mine) >= cfg.initial_seeds and mine <= theirs  # paired on the same seeds
    evals = store.evaluations()
    assert all(e.device_type == "sim" and e.device_name == "simulated" for e in evals)
    assert any(e.purpose == "rescore" for e in evals)
    assert any(e.purpose == "race" for e in evals)
    # the lookahead children were created before the generation they follow had finished
    assert cands["g003c00"].created_at < gens[2].finished_at
    assert cands["g001c01"].created_at < gens[0].finished_at  # planned while the root ran
    kinds = {e["kind"] for e in store.events(500)}
    assert {"noise_floor", "generation", "proposed", "evaluated"} <= kinds
    store.close()


class NeutralProposer:
    """Changes a constant the landscape ignores: every child is truly no better."""

    def propose(self, ctx: ProposalContext) -> Proposal:
        n = len(ctx.tried) + 100 * len(ctx.lineage)
        text = ctx.parent_train_py + f"\nUNUSED_{ctx.persona.upper()}_{n} = {n}\n"
        return Proposal(ctx.parent_commit, ctx.persona, "neutral", f"add UNUSED {n}", text, "knobs")


def test_noise_does_not_fool_the_archive_where_keep_if_lower_would_be(tmp_path):
    cfg = ProgramConfig(generations=3, population=6)
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg, proposer=NeutralProposer())
    arena.landscape = Landscape(sigma=0.02, rho=0.0)  # every run an independent draw
    loop.run()
    arena.close()
    children = [c for c in store.candidates() if c.id != ROOT_ID]
    confirmed = [c for c in children if c.status == Status.CONFIRMED]
    # autoresearch's rule (one run, keep if lower) would have kept many of these children:
    # count the runs that came out lower than their parent's mean
    lucky = runs = 0
    for c in children:
        parent = [e.val_bpb for e in store.evaluations(c.parent_id)]
        for e in store.evaluations(c.id):
            runs += 1
            lucky += e.val_bpb < sum(parent) / len(parent)
    assert lucky >= runs // 4
    assert len(confirmed) <= 1
    store.close()


class ScriptedProposer:
    """Per persona: a crash, an invalid reply, a duplicate, a real change."""

    def __init__(self):
        self.contexts: list[ProposalContext] = []
        self._lock = threading.Lock()

    def propose(self, ctx):
        with self._lock:
            self.contexts.append(ctx)
        knobs = read_knobs(ctx.parent_train_py)
        if ctx.persona == "crasher":
            return Proposal(ctx.parent_commit, "crasher", "s", "LEARNING_RATE 0.5",
                            set_knob(ctx.parent_train_py, "LEARNING_RATE", 0.5), "knobs")
        if ctx.persona == "confused":
            return InvalidEdit(ctx.parent_commit, "confused", "s", "SEARCH block did not match line 12",
                               raw_reply="<<<<<<< SEARCH ...")
        if ctx.persona == "copycat":
            return Proposal(ctx.parent_commit, "copycat", "s", "DEPTH + 1 again",
                            set_knob(ctx.parent_train_py, "DEPTH", knobs["DEPTH"] + 1), "knobs")
        return KnobProposer().propose(ctx)


def test_failures_are_stored_with_their_reasons_and_shown_to_later_children(tmp_path):
    cfg = ProgramConfig(generations=2, population=10, bandit_floor=0.25)
    proposer = ScriptedProposer()
    _, store, _, _ = _run(tmp_path, cfg, proposer=proposer,
                          personas=["crasher", "confused", "copycat", "tuner"])
    by_status = {}
    for c in store.candidates():
        by_status.setdefault(c.status, []).append(c)
    personas = {c.persona for c in store.candidates()}
    assert {"crasher", "confused", "copycat"} <= personas  # the bandit's floor gives each a turn
    for c in store.candidates():
        if c.persona == "crasher":  # the second identical crash is refused as a duplicate
            assert (c.status == Status.NAN and "nan" in c.message) or c.status == Status.GUARD_REFUSED
        if c.persona == "confused":
            assert c.status == Status.INVALID_EDIT and "SEARCH block did not match" in c.message
    assert Status.NAN in by_status
    refused = by_status.get(Status.GUARD_REFUSED, [])
    assert refused and all("duplicate" in c.message or "no-op" in c.message for c in refused)
    assert all(c.message for s in FAILURES for c in by_status.get(s, []))
    # generation 2 children (planned from version 1) see generation 1's failures
    late = [ctx for ctx in proposer.contexts if any(f.status == "nan" for f in ctx.failures)]
    assert late
    store.close()


def test_a_failing_root_stops_the_run_with_a_clear_error(tmp_path):
    loop, store, _, arena = simulated_loop(tmp_path / "run", ProgramConfig(generations=1))
    arena.landscape = Landscape(mem_limit_mb=50.0)
    with pytest.raises(RootFailed, match="root train.py failed on seed 0 \\(oom\\)"):
        loop.run()
    store.close()


def test_memory_ceiling_keeps_big_candidates_out_of_the_archive(tmp_path):
    cfg = ProgramConfig(generations=3, population=4, max_peak_mem_mb=190.0)
    _, store, _, _ = _run(tmp_path, cfg)
    for g in store.generations()[1:]:
        assert all(r["peak_mem_mb"] <= 190.0 for r in g.archive)
    store.close()


class LiteLLMProposer:
    """Asks litellm (mock_response: no network) and reports the call like the agents do."""

    def __init__(self, on_llm_call):
        self.on_llm_call = on_llm_call

    def propose(self, ctx):
        reply = litellm.completion(model="gpt-4o-mini", mock_response="DEPTH 5",
                                   messages=[{"role": "user", "content": ctx.program or "improve"}])
        self.on_llm_call(LLMCallRecord(ctx.persona, "gpt-4o-mini", reply.usage.prompt_tokens,
                                       reply.usage.completion_tokens, 0.001, 0.01, None))
        return dataclasses.replace(KnobProposer().propose(ctx), model="gpt-4o-mini")


def test_every_llm_call_is_stored_with_its_candidate(tmp_path):
    cfg = ProgramConfig(generations=1, population=3, prose="make it better")
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg)
    loop.proposer = LiteLLMProposer(loop.on_llm_call)
    loop.run()
    arena.close()
    calls = store.llm_calls()
    assert sorted(c.candidate_id for c in calls) == ["g001c00", "g001c01", "g001c02"]
    assert all(c.model == "gpt-4o-mini" and c.completion_tokens > 0 for c in calls)
    assert store.total_cost() == pytest.approx(0.003)
    store.close()


class RepairingProposer:
    """'crasher' breaks the learning rate; 'fixer' repairs what it is handed."""

    def __init__(self):
        self.repairs: list[ProposalContext] = []
        self._lock = threading.Lock()

    def propose(self, ctx):
        if ctx.persona == "crasher":
            bad = 0.2 + 0.01 * len(ctx.tried)
            return Proposal(ctx.parent_commit, "crasher", "s", f"LEARNING_RATE {bad}",
                            set_knob(ctx.parent_train_py, "LEARNING_RATE", bad), "knobs")
        if ctx.persona == "fixer" and ctx.repair_of is not None:
            with self._lock:
                self.repairs.append(ctx)
            fixed = set_knob(ctx.repair_train_py, "LEARNING_RATE", 0.008)
            return Proposal(ctx.parent_commit, "fixer", "s", f"repair {ctx.repair_of.candidate_id}", fixed, "knobs")
        return KnobProposer().propose(ctx)


def test_a_repairing_persona_gets_the_failed_code_and_its_parent(tmp_path):
    cfg = ProgramConfig(generations=3, population=6, bandit_floor=0.5)
    proposer = RepairingProposer()
    _, store, repo, _ = _run(tmp_path, cfg, proposer=proposer, personas=["crasher", "fixer"],
                             preferences={"crasher": "best", "fixer": "failed"})
    cands = {c.id: c for c in store.candidates()}
    assert proposer.repairs
    for ctx in proposer.repairs:
        failed = cands[ctx.repair_of.candidate_id]
        assert failed.status in FAILURES and ctx.repair_train_py == repo.read_file(failed.commit, "train.py")
        assert ctx.parent_id == failed.parent_id  # the repair is measured against the failed one's parent
    assert any(c.persona == "fixer" and c.status == Status.CONFIRMED for c in cands.values())
    store.close()


class TwoDirectionsProposer:
    """From the root: the tuner fixes the learning rate (better val_bpb), the architect
    drops a layer (less memory): two members of the front with a common ancestor."""

    def propose(self, ctx):
        if ctx.parent_id == "root" and ctx.persona == "tuner":
            return Proposal(ctx.parent_commit, "tuner", "s", "LEARNING_RATE 0.01",
                            set_knob(ctx.parent_train_py, "LEARNING_RATE", 0.01), "knobs")
        if ctx.parent_id == "root" and ctx.persona == "architect":
            return Proposal(ctx.parent_commit, "architect", "s", "DEPTH 3",
                            set_knob(ctx.parent_train_py, "DEPTH", 3), "knobs")
        return KnobProposer().propose(ctx)


def test_crossover_merges_two_archive_members_with_git(tmp_path):
    cfg = ProgramConfig(generations=2, population=4, crossover_rate=1.0, bandit_floor=0.5, lookahead=0)
    _, store, repo, _ = _run(tmp_path, cfg, proposer=TwoDirectionsProposer(), personas=["tuner", "architect"],
                             preferences={"tuner": "best", "architect": "frontier"},
                             crossover_personas={"architect"})
    cands = {c.id: c for c in store.candidates()}
    planned = [c for c in cands.values() if c.second_parent_id]
    assert planned, "no crossover was planned"
    merged = [c for c in planned if c.commit is not None]
    assert merged, "no crossover was committed"
    for c in planned:  # a merge of the same two members again is a repeat, refused before the arena
        if c.commit is None:
            assert c.status is Status.INVALID_EDIT and "repeats" in c.message
    for c in merged:
        assert repo.parents(c.commit) == [cands[c.parent_id].commit, cands[c.second_parent_id].commit]
        assert c.edit_format == "merge" and c.model == "git-merge"
        knobs = read_knobs(repo.read_file(c.commit, "train.py"))
        assert (knobs["LEARNING_RATE"], knobs["DEPTH"]) == (0.01, 3)  # both parents' changes
    store.close()


class ForgetfulArena:
    """A simulated arena whose first run comes back cancelled (RunOutcome.CANCELLED)."""

    def __init__(self, inner):
        self.inner, self.dropped = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def poll(self, timeout=0.0):
        out = []
        for r in self.inner.poll(timeout):
            if self.dropped == 0:
                self.dropped += 1
                r = dataclasses.replace(r, outcome=RunOutcome.CANCELLED, message="cancelled", val_bpb=None)
            out.append(r)
        return out


def test_a_run_that_comes_back_without_an_outcome_is_redone(tmp_path):
    loop, store, _, arena = simulated_loop(tmp_path / "run", ProgramConfig(generations=1, population=2))
    loop.arena = ForgetfulArena(arena)
    loop.run()
    arena.close()
    everything = store.evaluations(include_unfinished=True)
    dropped = [e for e in everything if e.status == "interrupted"]
    assert len(dropped) == 1
    redone = [e for e in everything if (e.candidate_id, e.seed) == (dropped[0].candidate_id, dropped[0].seed)]
    assert [e.status for e in redone] == ["interrupted", "evaluated"]
    store.close()


def test_stopping_criteria_from_program_md(tmp_path):
    outcome, store, _, _ = _run(tmp_path / "target", ProgramConfig(generations=5, target_val_bpb=2.0))
    assert outcome.generations == 0 and outcome.stop_reason.startswith("reached target val_bpb 2.0")
    store.close()

    cfg = ProgramConfig(generations=5, population=2, max_cost_usd=0.002)
    loop, store, _, arena = simulated_loop(tmp_path / "cost", cfg)
    loop.proposer = LiteLLMProposer(loop.on_llm_call)  # 0.001 USD a call
    outcome = loop.run()
    arena.close()
    # the ceiling is checked while the generation runs: it stops as soon as it is spent
    assert outcome.stop_reason == "spent the maximum cost 0.002 USD"
    assert store.total_cost() >= 0.002
    assert all(c.generation <= 1 for c in store.candidates())
    store.close()

    cfg = ProgramConfig(generations=5, population=2, max_hours=1.0)
    loop, store, _, arena = simulated_loop(tmp_path / "hours", cfg)
    store.start_session(["test"], {})
    loop.clock = lambda: store.sessions()[0]["started_at"] + 3601.0  # an hour later
    outcome = loop.run()
    arena.close()
    assert outcome.generations == 0 and outcome.stop_reason == "ran the maximum 1.0 hours"
    store.close()


class FailingArena(ForgetfulArena):
    """The arena itself fails on the runs of one candidate `times` times in a row."""

    def __init__(self, inner, victim, times):
        super().__init__(inner)
        self.victim, self.times = victim, times

    def poll(self, timeout=0.0):
        out = []
        for r in self.inner.poll(timeout):
            if r.candidate_id == self.victim and self.dropped < self.times:
                self.dropped += 1
                r = dataclasses.replace(r, outcome=RunOutcome.ARENA_ERROR, message="arena error: worker died",
                                        status=Status.CRASHED, val_bpb=None)
            out.append(r)
        return out


def test_an_arena_error_is_redone_and_never_counted_against_the_candidate(tmp_path):
    loop, store, _, arena = simulated_loop(tmp_path / "run", ProgramConfig(generations=1, population=2))
    loop.arena = FailingArena(arena, "g001c00", 2)
    loop.run()
    everything = [e for e in store.evaluations(include_unfinished=True) if e.candidate_id == "g001c00"]
    assert [e.status for e in everything].count("interrupted") == 2
    assert store.candidate("g001c00").status in (Status.CONFIRMED, Status.REJECTED)  # not crashed
    store.close()

    loop, store, _, arena = simulated_loop(tmp_path / "again", ProgramConfig(generations=1, population=2))
    loop.arena = FailingArena(arena, "g001c00", 99)
    with pytest.raises(LoopError, match="the arena failed 3 times on g001c00"):
        loop.run()
    arena.close()
    store.close()


def test_a_child_and_its_parents_control_start_together_on_a_fresh_seed(tmp_path):
    cfg = ProgramConfig(generations=2, population=3)
    _, store, _, _ = _run(tmp_path, cfg)
    evals = store.evaluations()
    by_id = {e.id: e for e in evals}
    children = {c.id: c for c in store.candidates() if c.id != ROOT_ID}
    for e in evals:
        if e.purpose not in ("initial", "race"):
            continue
        control = by_id[e.id - 1]  # started just before, in the same dispatch
        assert (control.candidate_id, control.seed, control.purpose) == (children[e.candidate_id].parent_id,
                                                                          e.seed, "pair")
        assert e.seed // 1000 == children[e.candidate_id].generation
    seeds = [(e.candidate_id, e.seed) for e in evals if e.purpose in ("initial", "race")]
    assert len({s for _, s in seeds}) == len(seeds)  # every child round has its own seed
    store.close()


class RecordingProposer(KnobProposer):
    """KnobProposer that keeps every context it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ProposalContext] = []
        self.lock = threading.Lock()

    def propose(self, ctx):
        with self.lock:
            self.seen.append(ctx)
        return super().propose(ctx)


@pytest.mark.slow
def test_generation_one_lookahead_children_see_the_unmeasured_root_whenever_proposed(tmp_path):
    """Generation 1's first `lookahead` children are planned and proposed while the root
    runs: they see version -1 (the root, unmeasured: no scores, floor, archive, telemetry
    or memory), so what they are shown does not depend on when they were proposed, and a
    resumed run rebuilds the same context from the store."""
    cfg = ProgramConfig(generations=1, population=4, lookahead=2)
    proposer = RecordingProposer()
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg, slots=2, run_seconds=0.3, proposer=proposer)
    try:
        loop.run()
    finally:
        arena.close()
    gen0 = store.generations()[0]
    cands = {c.id: c for c in store.candidates()}
    early, late = [cands["g001c00"], cands["g001c01"]], [cands["g001c02"], cands["g001c03"]]
    assert all(c.archive_version == -1 and c.parent_id == ROOT_ID and c.created_at < gen0.finished_at for c in early)
    assert all(c.archive_version == 0 for c in late)
    # the early children ran beside the root's noise-floor runs
    assert min(e.started_at for c in early for e in store.evaluations(c.id)) < gen0.finished_at
    store.close()
    # rebuilt from the store after the run (as a resumed run does): the context they were shown
    reopened, store2, _, arena2 = simulated_loop(tmp_path / "run", cfg, slots=2)
    try:
        reopened._recover()
        for c in early:
            ctx = reopened.planner.build_context(c, reopened.planner.tried(c) or [])
            assert ctx.noise_floor is None and ctx.archive == [] and ctx.telemetry == "" and ctx.memory == ""
            assert [s.val_bpb for s in ctx.lineage] == [None]
            shown = [(s.persona, s.tried, s.lineage, s.archive, s.failures, s.memory, s.telemetry, s.noise_floor)
                     for s in proposer.seen]
            assert (ctx.persona, ctx.tried, ctx.lineage, ctx.archive, ctx.failures, ctx.memory, ctx.telemetry,
                    ctx.noise_floor) in shown, c.id
        for c in late:
            ctx = reopened.planner.build_context(c, reopened.planner.tried(c) or [])
            assert ctx.noise_floor is not None and ctx.archive and ctx.lineage[0].val_bpb is not None
    finally:
        reopened._pool.shutdown()
        arena2.close()
        store2.close()
