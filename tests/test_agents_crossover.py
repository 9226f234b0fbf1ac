"""Crossover (agents.crossover) on a real experiment repository in tmp_path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agents.crossover import MERGE_MODEL, crossover, find_pairs, pick_pair
from agents.edits import apply_knobs
from agents.proposal import ArchiveRow, InvalidEdit, Proposal

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
