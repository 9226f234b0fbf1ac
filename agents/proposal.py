"""Records that pass between the population loop and the proposers.

The loop builds a `ProposalContext` (what a persona may see: program.md's prose, the
parent's code and lineage, the archive, recent failures, the run's research memory,
the parent's training telemetry, and the programs already tried for the novelty gate)
and asks a `Proposer` for a child. The answer is either a `Proposal` (a validated new train.py with its hypothesis)
or an `InvalidEdit` (why the model's reply could not be turned into one); the loop
stores both, so a bad reply is never lost. Either carries the `refusals` met on the
way (a repeat, a failed one-step preflight), which the loop counts as device time saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agents.novelty import NoveltyIndex, Refusal


@dataclass(frozen=True)
class LineageStep:
    """One ancestor of the parent: what it tried and what it measured."""

    commit: str
    persona: str
    hypothesis: str
    val_bpb: float | None  # mean over seeds
    val_bpb_std: float | None
    delta_vs_parent: float | None  # negative is better
    status: str


@dataclass(frozen=True)
class ArchiveRow:
    candidate_id: str
    commit: str
    persona: str
    hypothesis: str
    val_bpb: float
    val_bpb_std: float
    peak_mem_mb: float
    n_seeds: int


@dataclass(frozen=True)
class Failure:
    candidate_id: str
    persona: str
    hypothesis: str
    status: str  # a Status value
    message: str  # the traceback tail, the guard's reason...


@dataclass(frozen=True)
class ProposalContext:
    persona: str
    program: str  # program.md's prose (front matter removed)
    parent_id: str
    parent_commit: str
    parent_train_py: str
    lineage: list[LineageStep] = field(default_factory=list)  # root first
    archive: list[ArchiveRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # most recent first
    tried: list[str] = field(default_factory=list)  # hypotheses already tried
    noise_floor: float | None = None  # std of val_bpb over seeds at the root
    # for the bug-hunter repairing a crashed candidate: its code and its failure
    repair_of: Failure | None = None
    repair_train_py: str | None = None
    # for crossover: a second archive member sharing an ancestor with the parent
    second_parent_commit: str | None = None
    second_parent_train_py: str | None = None
    # what the whole run learned (population.memory.digest) and how the parent trained
    # (population.telemetry.render); plain text, trimmed with the rest of the prompt
    memory: str = ""
    telemetry: str = ""
    # programs already measured, refused or queued: a repeat is refused before the arena
    novelty: NoveltyIndex | None = None


@dataclass(frozen=True)
class Proposal:
    parent_commit: str
    persona: str
    model: str
    hypothesis: str
    train_py: str  # the whole new file
    edit_format: str  # "search_replace", "whole_file", "knobs", "moves", "random", "merge", "scripted"
    second_parent_commit: str | None = None  # set for a crossover (merge commit)
    # proposals refused before the arena on the way to this one (novelty, preflight...):
    # the loop records each as an event, device time saved
    refusals: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class InvalidEdit:
    parent_commit: str
    persona: str
    model: str
    reason: str
    raw_reply: str = ""
    hypothesis: str = ""
    refusals: tuple[Refusal, ...] = ()  # as in Proposal; the last one is why, when refused
    unmatched_block: int | None = None  # a SEARCH block that matched nowhere or several places


class Proposer(Protocol):
    """Turns a context into a child. Must not raise on a bad LLM reply: that is an
    `InvalidEdit` with a reason. May raise on configuration errors (missing API key,
    cost ceiling reached) that should stop the run."""

    def propose(self, ctx: ProposalContext) -> Proposal | InvalidEdit: ...
