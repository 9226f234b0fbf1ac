"""Crossover (agents.crossover) on a real experiment repository in tmp_path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agents.crossover import MERGE_MODEL, crossover, find_pairs, gated_crossover, pick_pair
from agents.edits import apply_knobs
from agents.novelty import NoveltyIndex, Refusal
from agents.proposal import ArchiveRow, InvalidEdit, Proposal, ProposalContext

repo_mod = pytest.importorskip("arena.repo", reason="arena.repo (ExperimentRepo) is not available")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = (ROOT / "train_template.py").read_text()


def row(cid: str, commit: str, bpb: float, hyp: str) -> ArchiveRow:
    return ArchiveRow(cid, commit, "optimizer-tuner", hyp, bpb, 0.01, 300.0, 3)


@pytest.fixture()
def repo(tmp_path):
    return repo_mod.ExperimentRepo.create(tmp_path / "run", TEMPLATE, (ROOT / "prepare.py").read_text(), "# program\n")


def test_clean_merge_of_two_siblings(repo):
    root = repo.root_commit
    a = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"DEPTH": 6}), "a: deeper")
    b = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"GRAD_CLIP": 0.5}), "b: tighter clipping")
    archive = [row("ca", a, 1.80, "deeper model"), row("cb", b, 1.85, "tighter clipping"), row("cr", root, 1.9, "seed")]
    pairs = find_pairs(archive, repo.lineage)
    # the root is an ancestor of both: only (a, b) qualifies, the better one first
    assert [(p.first.candidate_id, p.second.candidate_id) for p in pairs] == [("ca", "cb")]
    assert pairs[0].common_ancestor == root and pairs[0].distance == 2
    result = crossover(repo, pairs[0])
    out = result.outcome
    assert isinstance(out, Proposal) and result.merge_commit
    assert out.edit_format == "merge" and out.model == MERGE_MODEL
    assert (out.parent_commit, out.second_parent_commit) == (a, b)
    assert "DEPTH = 6" in out.train_py and "GRAD_CLIP = 0.5" in out.train_py
    assert repo.parents(result.merge_commit) == [a, b]
    assert "deeper model" in out.hypothesis and "tighter clipping" in out.hypothesis


def test_conflicting_merge_is_an_invalid_edit(repo):
    root = repo.root_commit
    a = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"LEARNING_RATE": 0.002}), "a")
    b = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"LEARNING_RATE": 0.004}), "b")
    pair = pick_pair([row("ca", a, 1.8, "lr down"), row("cb", b, 1.81, "lr up")], repo.lineage, random.Random(0))
    assert pair is not None
    result = crossover(repo, pair)
    assert isinstance(result.outcome, InvalidEdit) and result.merge_commit is None
    assert "not clean" in result.outcome.reason


def test_no_pair_when_one_descends_from_the_other(repo):
    root = repo.root_commit
    a = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"GRAD_CLIP": 0.5}), "a")
    b = repo.commit_candidate(a, apply_knobs(TEMPLATE, {"GRAD_CLIP": 0.5, "DEPTH": 6}), "b")
    assert pick_pair([row("ca", a, 1.8, "x"), row("cb", b, 1.7, "y")], repo.lineage, random.Random(0)) is None


def _siblings(repo):
    root = repo.root_commit
    a = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"DEPTH": 6}), "a: deeper")
    b = repo.commit_candidate(root, apply_knobs(TEMPLATE, {"GRAD_CLIP": 0.5}), "b: tighter clipping")
    pair = pick_pair([row("ca", a, 1.80, "deeper"), row("cb", b, 1.85, "clipping")], repo.lineage, random.Random(0))
    assert pair is not None
    return pair


def _ctx(repo, known: list[tuple[str, str, str]]) -> ProposalContext:
    return ProposalContext(persona="architect", program="", parent_id="ca", parent_commit="",
                           parent_train_py=TEMPLATE, novelty=NoveltyIndex.build(known))


def test_a_merge_that_repeats_a_known_program_is_refused_by_the_novelty_gate(repo):
    pair = _siblings(repo)
    # the same two changes, already measured as one hand-written candidate (other formatting)
    same = apply_knobs(apply_knobs(TEMPLATE, {"GRAD_CLIP": 0.50}), {"DEPTH": 6})
    checked = []
    result = gated_crossover(repo, pair, _ctx(repo, [("root", TEMPLATE, "measured"), ("c7", same, "measured")]),
                             [lambda ctx, p: checked.append(p) or None])
    out = result.outcome
    assert isinstance(out, InvalidEdit) and out.model == MERGE_MODEL
    assert [r.kind for r in result.refusals] == ["same_knobs"] and result.refusals[0].duplicate_of == "c7"
    assert out.reason.startswith("refused before the arena (same_knobs)") and "c7" in out.reason
    assert checked == []  # a repeat never reaches the preflight


def test_a_merge_the_preflight_refuses_never_reaches_the_arena_and_a_passing_one_is_unchanged(repo):
    pair = _siblings(repo)
    seen = []

    def preflight(ctx, proposal):
        seen.append(proposal.train_py)
        return Refusal("preflight", "the child failed a one-step trial run on CPU: boom")

    refused = gated_crossover(repo, pair, _ctx(repo, [("root", TEMPLATE, "measured")]), [preflight])
    assert isinstance(refused.outcome, InvalidEdit) and refused.merge_commit
    assert [r.kind for r in refused.refusals] == ["preflight"] and "boom" in refused.outcome.reason
    assert "DEPTH = 6" in seen[0] and "GRAD_CLIP = 0.5" in seen[0]  # the check ran on the merged file
    passed = gated_crossover(repo, pair, _ctx(repo, [("root", TEMPLATE, "measured")]), [lambda ctx, p: None])
    assert isinstance(passed.outcome, Proposal) and passed.refusals == ()
    assert passed.outcome.train_py == seen[0]


class _MergeRefusingProposer:
    """From the root the tuner and the architect go two ways (a front of two with a common
    ancestor); `checks` is the proposer's gate, as LLMProposer's: it refuses every merge."""

    def __init__(self):
        from population.simulated import KnobProposer

        self.inner = KnobProposer()
        self.checked: list[str] = []
        self.checks = [self._preflight]

    def _preflight(self, ctx, proposal):
        self.checked.append(proposal.model)
        return Refusal("preflight", "the merge failed its one-step run") if proposal.model == MERGE_MODEL else None

    def propose(self, ctx):
        from population.simulated import set_knob

        if ctx.parent_id == "root" and ctx.persona in ("tuner", "architect"):
            knob, value = ("LEARNING_RATE", 0.01) if ctx.persona == "tuner" else ("DEPTH", 3)
            return Proposal(ctx.parent_commit, ctx.persona, "s", f"{knob} {value}",
                            set_knob(ctx.parent_train_py, knob, value), "knobs")
        return self.inner.propose(ctx)


@pytest.mark.slow
def test_the_loop_sends_crossovers_through_the_gate_and_records_the_refusal(tmp_path):
    from population.program import ProgramConfig
    from population.simulated import simulated_loop

    proposer = _MergeRefusingProposer()
    cfg = ProgramConfig(generations=2, population=4, crossover_rate=1.0, bandit_floor=0.5, lookahead=0)
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg, proposer=proposer, personas=["tuner", "architect"],
                                           preferences={"tuner": "best", "architect": "frontier"},
                                           crossover_personas={"architect"})
    try:
        loop.run()
        merged = [c for c in store.candidates() if c.second_parent_id]
        events = [e for e in store.events(500) if e["kind"] == "preflight_refused"]
    finally:
        arena.close()
        store.close()
    assert merged and MERGE_MODEL in proposer.checked
    for c in merged:  # refused before the arena: no commit, never run
        assert c.status.value == "invalid_edit" and c.commit is None and "refused before the arena" in c.message
    assert sorted(e["candidate_id"] for e in events) == sorted(c.id for c in merged)
    assert all('"saved_runs"' in e["payload"] for e in events)
