"""Crossover: the architect combines two archive members that share an ancestor.

The population loop, when the architect persona allows it (`Persona.crossover`), asks
`find_pairs` for archive members whose lineages meet (neither descends from the
other, their newest common ancestor is near), then `crossover` has the experiment
repository do a git merge of the two (`arena.repo.ExperimentRepo.merge`, done by the
repository, not here). A clean merge becomes a `Proposal` with edit_format "merge" and
`second_parent_commit` set, validated like any other edit (compiles, keeps the
contract, differs from both parents); a conflicting merge becomes an `InvalidEdit`.
The loop calls `gated_crossover`, which then sends a clean merge through the same gate as
every other proposal (agents.proposer.gate: the novelty gate, then the proposer's checks
such as arena.preflight); a refused merge is an `InvalidEdit` carrying its `Refusal`, which
the loop records like any refusal (events `novelty_refused` / `preflight_refused`).

It calls no LLM and does not decide how often crossover happens; it runs code only
through the checks it is given.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agents.edits import EditError, validate_train_py
from agents.novelty import Refusal
from agents.proposal import ArchiveRow, InvalidEdit, Proposal, ProposalContext

log = logging.getLogger(__name__)

MERGE_MODEL = "git-merge"  # the Proposal.model of a crossover: no LLM wrote it


class MergeRepo(Protocol):
    """What `crossover` needs of arena.repo.ExperimentRepo."""

    def merge(self, commit_a: str, commit_b: str, message: str) -> str | None: ...

    def read_file(self, commit: str, path: str) -> str: ...


@dataclass(frozen=True)
class CrossoverPair:
    first: ArchiveRow  # becomes the Proposal's parent_commit
    second: ArchiveRow  # becomes second_parent_commit
    common_ancestor: str
    distance: int  # commits from the common ancestor to both members, summed


@dataclass(frozen=True)
class CrossoverResult:
    outcome: Proposal | InvalidEdit
    merge_commit: str | None  # the merge commit the repository made (None when not clean)

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        """The gate's refusals of this merge (the loop records each, as for any proposal)."""
        return self.outcome.refusals


def find_pairs(archive: list[ArchiveRow], lineage_of: Callable[[str], list[str]]) -> list[CrossoverPair]:
    """Pairs of archive members that can be combined, closest relatives first.

    `lineage_of(commit)` returns the commit and its ancestors, newest first (as
    `ExperimentRepo.lineage`). A pair qualifies when neither member is an ancestor of
    the other and they share an ancestor; the better member (lower val_bpb) is first."""
    lineages = {r.commit: lineage_of(r.commit) for r in archive}
    pairs: list[CrossoverPair] = []
    rows = sorted(archive, key=lambda r: r.val_bpb)
    for i, a in enumerate(rows):
        la = lineages[a.commit]
        pos_a = {c: k for k, c in enumerate(la)}
        for b in rows[i + 1 :]:
            lb = lineages[b.commit]
            if a.commit == b.commit or a.commit in lb or b.commit in pos_a:
                continue
            common = next(((k, c) for k, c in enumerate(lb) if c in pos_a), None)
            if common is None:
                continue
            kb, ancestor = common
            pairs.append(CrossoverPair(a, b, ancestor, pos_a[ancestor] + kb))
    pairs.sort(key=lambda p: (p.distance, p.first.val_bpb + p.second.val_bpb))
    return pairs


def pick_pair(
    archive: list[ArchiveRow], lineage_of: Callable[[str], list[str]], rng: random.Random, top: int = 3
) -> CrossoverPair | None:
    """One of the `top` closest pairs at random, or None when no pair qualifies."""
    pairs = find_pairs(archive, lineage_of)
    return rng.choice(pairs[:top]) if pairs else None


def merge_hypothesis(pair: CrossoverPair) -> str:
    return (
        f"combine {pair.first.candidate_id} ({pair.first.hypothesis.strip()[:150]}) "
        f"with {pair.second.candidate_id} ({pair.second.hypothesis.strip()[:150]})"
    )


def crossover(repo: MergeRepo, pair: CrossoverPair, persona: str = "architect") -> CrossoverResult:
    """Merge the pair in the repository and validate the result."""
    a, b = pair.first.commit, pair.second.commit
    hypothesis = merge_hypothesis(pair)
    merged = repo.merge(a, b, f"[{persona}] crossover: {hypothesis}")
    if merged is None:
        reason = f"merge of {a[:10]} and {b[:10]} is not clean (conflicts in train.py)"
        return CrossoverResult(InvalidEdit(a, persona, MERGE_MODEL, reason, "", hypothesis), None)
    train_py = repo.read_file(merged, "train.py")
    try:
        validate_train_py(repo.read_file(a, "train.py"), train_py)
        validate_train_py(repo.read_file(b, "train.py"), train_py)
    except EditError as e:
        reason = f"merge of {a[:10]} and {b[:10]}: {e}"
        return CrossoverResult(InvalidEdit(a, persona, MERGE_MODEL, reason, "", hypothesis), merged)
    proposal = Proposal(
        parent_commit=a,
        persona=persona,
        model=MERGE_MODEL,
        hypothesis=hypothesis,
        train_py=train_py,
        edit_format="merge",
        second_parent_commit=b,
    )
    return CrossoverResult(proposal, merged)


def gated_crossover(repo: MergeRepo, pair: CrossoverPair, ctx: ProposalContext,
                    checks: Sequence[Callable[[ProposalContext, Proposal], Refusal | None]] = ()) -> CrossoverResult:
    """`crossover`, then the gate every proposal passes before the arena: a merge that
    repeats a program of `ctx.novelty`, or that one of `checks` refuses, becomes an
    InvalidEdit with the refusal (there is no model to ask again: the merge is final)."""
    from agents.proposer import gate, refused

    result = crossover(repo, pair, ctx.persona)
    if not isinstance(result.outcome, Proposal):
        return result
    refusal = gate(ctx, result.outcome, checks)
    if refusal is None:
        return result
    return CrossoverResult(refused(result.outcome, refusal, (refusal,)), result.merge_commit)
