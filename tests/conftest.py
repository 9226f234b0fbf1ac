"""Shared test helpers.

`evaluated_run(...)` builds the `RunResult` of a successful run (what the arena hands the
loop) with test defaults; tests that write measurements into a store use it instead of
spelling out every field.
"""

from __future__ import annotations

from arena.records import RunResult, Status


def evaluated_run(cid: str, seed: int, val: float = 1.0, mem: float = 100.0, *, commit: str = "abc",
                  device: str = "cpu", **fields: object) -> RunResult:
    """A measured run of `cid` on `seed`: val_bpb `val`, peak memory `mem` MB."""
    return RunResult(cid, commit, seed, Status.EVALUATED, val_bpb=val, peak_mem_mb=mem,
                     device_type=device, device_name=f"test {device}", **fields)  # type: ignore[arg-type]
