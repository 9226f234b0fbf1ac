"""The arena: trusted, isolated evaluation of train.py variants on device slots.

Flow: population loop -> `Arena.submit(RunRequest)` -> guards, worktree,
sandboxed training, separate-process evaluation -> `poll()` -> `RunResult`.
Modules: `protocol` (the Arena protocol and its contract), `records` (shared records:
`RunRequest`, `RunResult`, `RunOutcome`, `Status`), `repo` (git), `guards`, `devices`, `sandbox`,
`supervise` (process-tree owner), `runner`, `evaluate` + `eval_worker` (trusted
evaluation), `execute` (one run), `local` and `ray_backend` (executors).

Attributes are imported lazily so that `import arena.records` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only; at run time see __getattr__
    from arena.devices import Slot, detect_slots
    from arena.execute import ArenaConfig
    from arena.local import LocalArena
    from arena.protocol import Arena, ArenaClosed
    from arena.records import RunOutcome, RunRequest, RunResult, Status
    from arena.repo import ExperimentRepo

_EXPORTS = {
    "Arena": "arena.protocol",
    "ArenaClosed": "arena.protocol",
    "RunOutcome": "arena.records",
    "LocalArena": "arena.local",
    "ArenaConfig": "arena.execute",
    "ExperimentRepo": "arena.repo",
    "Slot": "arena.devices",
    "detect_slots": "arena.devices",
    "RunRequest": "arena.records",
    "RunResult": "arena.records",
    "Status": "arena.records",
    "RayArena": "arena.ray_backend",
}

__all__ = [
    "Arena",
    "ArenaClosed",
    "ArenaConfig",
    "ExperimentRepo",
    "LocalArena",
    "RayArena",
    "RunOutcome",
    "RunRequest",
    "RunResult",
    "Slot",
    "Status",
    "detect_slots",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'arena' has no attribute {name!r}")
