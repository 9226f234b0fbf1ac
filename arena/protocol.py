"""The Arena protocol: what every executor of candidate runs promises its caller.

Flow: the population loop -> `Arena.submit(RunRequest)` -> (guards, worktree, sandboxed
training, trusted evaluation, inside the backend) -> `Arena.poll()` -> `RunResult`.
Backends: `arena.local.LocalArena` (this machine's slots), `arena.ray_backend.RayArena`
(a Ray cluster), `population.simulated.SimulatedArena` (a scored landscape, no
training). `tests/test_arena_conformance.py` runs one suite of contract tests over all
three. What it does not do: decide what to run, or what a result means for selection.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from arena.progress import RunProgress
from arena.records import RunRequest, RunResult


class ArenaClosed(RuntimeError):
    """`submit` after `close`: the arena takes no more runs."""


@runtime_checkable
class Arena(Protocol):
    """Runs `RunRequest`s on device slots and hands back one `RunResult` per request.

    A run's states: queued -> running -> done -> delivered; a queued or running run can
    instead be cancelled (by `cancel` or `close`) -> done -> delivered. "Done" means its
    result waits in the arena; "delivered" means one `poll` call returned it.

    Ownership: from `submit` until its result is delivered, the run belongs to the
    arena: its processes, worktree, output directory and data copies are the arena's
    to create and to remove, whatever the candidate does. The caller owns the store:
    an arena never writes to it (the results carry everything to record). A result,
    once delivered, belongs to the caller.

    Exactly one result per submitted request, always: finished, cancelled or arena
    error, delivered by exactly one `poll` call, also after `cancel` and `close`.
    `RunResult.outcome` says which (`arena.records.RunOutcome`): FINISHED carries the
    candidate's verdict in `status`; CANCELLED and ARENA_ERROR carry none (status
    PROPOSED) and the run should be redone; an ARENA_ERROR is never the candidate's
    fault. A backend never raises from `poll` because one run failed.

    Thread safety: every method may be called from any thread at any time. Results go
    to whichever `poll` call takes them first, so one consumer should poll.
    """

    def submit(self, request: RunRequest) -> None:
        """Queue `request`; it starts as soon as a slot is free. Never blocks on a
        slot and never refuses for lack of one. Raises ValueError for a request that
        cannot run (budget_s <= 0) and `ArenaClosed` after `close`."""
        ...

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        """Results that became done since the last poll, oldest first. Waits up to
        `timeout` seconds (None: until one is done) when none is done yet; returns []
        when nothing came in that time, and may return [] at once when nothing is
        queued or running."""
        ...

    def cancel(self, candidate_id: str, seed: int | None = None) -> int:
        """Stop every queued and running run of `candidate_id` (only the one on `seed`
        when given) without waiting; returns how many it stopped (0 for an unknown or
        finished candidate). Each stopped run gives a CANCELLED result; a run that
        finished meanwhile keeps its FINISHED one. Its processes are gone and its
        worktree removed before its result is done."""
        ...

    def progress(self) -> dict[tuple[str, int], RunProgress]:
        """Each running run so far, by (candidate_id, seed): its progress lines (claims
        of the candidate, `arena.progress`) and the peak memory measured from outside.
        Runs that printed no progress line, or every run of a backend that cannot see
        them live, are absent. For stopping a run early only (population.cascade)."""
        ...

    def free_slots(self) -> int:
        """How many more submissions would start at once: slots minus queued and
        running runs, never below 0; 0 after `close`."""
        ...

    def busy(self) -> int:
        """Runs queued or running (submitted, result not yet done)."""
        ...

    def close(self) -> None:
        """Cancel everything queued or running and wait until its processes are gone
        and its worktrees removed. Idempotent. Afterwards `poll` still returns the
        results not yet delivered (the cancelled ones included), `submit` raises
        `ArenaClosed`, `cancel` returns 0."""
        ...
