"""Records shared by the arena and the population loop.

The population loop hands the arena a `RunRequest` (a candidate commit and a seed) and
gets a `RunResult` back. `RunOutcome` says how the run ended (finished, cancelled, or
failed in the arena itself); only a finished run's `status` is a verdict on the
candidate. `Status` names every state a candidate can be in, with the allowed
transitions written down once, here. The arena never decides whether a candidate is
better than another: that is the population's job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RunOutcome(str, enum.Enum):
    """How one run ended, as the arena saw it (never a candidate status).

    FINISHED: the run ended; `RunResult.status` is the candidate's final status for
    this run (evaluated, or a candidate failure such as crashed or timeout).
    CANCELLED: stopped by `Arena.cancel` or `Arena.close` before it had a verdict.
    ARENA_ERROR: the arena itself failed (a git error, a lost Ray node, an evaluator
    fault), not the candidate; never counted against it.
    A CANCELLED or ARENA_ERROR run measured nothing: the loop runs it again."""

    FINISHED = "finished"
    CANCELLED = "cancelled"
    ARENA_ERROR = "arena_error"

    def is_redo(self) -> bool:
        """The run has no verdict and should be run again."""
        return self is not RunOutcome.FINISHED


class Status(str, enum.Enum):
    PROPOSED = "proposed"
    INVALID_EDIT = "invalid_edit"
    GUARD_REFUSED = "guard_refused"
    RUNNING = "running"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    OOM = "oom"
    NAN = "nan"
    CONTRACT_ERROR = "contract_error"
    CAUSALITY_VIOLATION = "causality_violation"
    EVALUATED = "evaluated"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"

    def is_finished(self) -> bool:
        """A finished candidate gets no more runs (its record is final)."""
        return not TRANSITIONS[self]

    def is_failure(self) -> bool:
        """The run produced no trustworthy metric."""
        return self in FAILURES


FAILURES = frozenset(
    {
        Status.INVALID_EDIT,
        Status.GUARD_REFUSED,
        Status.CRASHED,
        Status.TIMEOUT,
        Status.OOM,
        Status.NAN,
        Status.CONTRACT_ERROR,
        Status.CAUSALITY_VIOLATION,
    }
)

# Allowed transitions of a candidate. A run outcome (crashed, timeout...) is final;
# `evaluated` means "measured on at least one seed", and racing decides between
# `confirmed` (entered the archive) and `rejected` (measured, but not better).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PROPOSED: frozenset({Status.INVALID_EDIT, Status.GUARD_REFUSED, Status.RUNNING}),
    Status.RUNNING: frozenset(
        {
            Status.CRASHED,
            Status.TIMEOUT,
            Status.OOM,
            Status.NAN,
            Status.CONTRACT_ERROR,
            Status.CAUSALITY_VIOLATION,
            Status.EVALUATED,
            Status.PROPOSED,  # an interrupted run (killed evolve) is redone
            Status.REJECTED,  # stopped early by the evaluation cascade (population.cascade)
        }
    ),
    Status.EVALUATED: frozenset({Status.RUNNING, Status.CONFIRMED, Status.REJECTED}),
    # archive members are re-scored from time to time and can fall out
    Status.CONFIRMED: frozenset({Status.RUNNING, Status.REJECTED}),
    Status.INVALID_EDIT: frozenset(),
    Status.GUARD_REFUSED: frozenset(),
    Status.CRASHED: frozenset(),
    Status.TIMEOUT: frozenset(),
    Status.OOM: frozenset(),
    Status.NAN: frozenset(),
    Status.CONTRACT_ERROR: frozenset(),
    Status.CAUSALITY_VIOLATION: frozenset(),
    Status.REJECTED: frozenset(),
}


def check_transition(old: Status, new: Status) -> None:
    """Raise ValueError when `old -> new` is not an allowed transition."""
    if new not in TRANSITIONS[old]:
        raise ValueError(f"candidate status cannot go from {old.value} to {new.value}")


@dataclass(frozen=True)
class RunRequest:
    """One training run of one candidate on one seed. The seed is chosen by the loop,
    never by the candidate."""

    candidate_id: str
    commit: str
    seed: int
    budget_s: float


@dataclass(frozen=True)
class RunResult:
    """What the arena measured. `val_bpb`, `test_bpb` and `peak_mem_mb` come from the
    trusted evaluator and from outside the process; `claimed` holds what the candidate
    printed or wrote itself, kept for the record and never used for selection.

    Read `outcome` first: `status` is a verdict only when the outcome is FINISHED; a
    CANCELLED or ARENA_ERROR result carries `Status.PROPOSED` (the candidate goes back
    to be run) and says why in `message`."""

    candidate_id: str
    commit: str
    seed: int
    status: Status
    message: str = ""
    val_bpb: float | None = None
    test_bpb: float | None = None
    peak_mem_mb: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None  # CPU time (user + system) of the training process tree
    device_type: str = "cpu"
    device_name: str = ""
    log_path: str = ""
    claimed: dict = field(default_factory=dict)
    outcome: RunOutcome = RunOutcome.FINISHED


def unmeasured(
    request: RunRequest, outcome: RunOutcome, message: str, **fields: object
) -> RunResult:
    """The result of a run that has no verdict: cancelled, or failed in the arena."""
    if outcome is RunOutcome.FINISHED:
        raise ValueError("a finished run has a verdict; build its RunResult directly")
    return RunResult(
        candidate_id=request.candidate_id,
        commit=request.commit,
        seed=request.seed,
        status=Status.PROPOSED,
        message=message,
        outcome=outcome,
        **fields,  # type: ignore[arg-type]
    )
