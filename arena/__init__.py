"""The arena: trusted, isolated evaluation of train.py variants on device slots.

Flow: population loop -> `LocalArena.submit(RunRequest)` -> guards, worktree,
sandboxed training, separate-process evaluation -> `poll()` -> `RunResult`.
Modules: `records` (shared records), `repo` (git), `guards`, `devices`, `sandbox`,
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
    from arena.records import RunRequest, RunResult, Status
    from arena.repo import ExperimentRepo

_EXPORTS = {
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
    "ArenaConfig",
    "ExperimentRepo",
    "LocalArena",
    "RayArena",
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
