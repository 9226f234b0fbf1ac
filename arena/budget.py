"""The training budget as the arena enforces it: its unit, a run's limits, and the
start-up allowance that follows the root's measured start-up.

Flow: a backend (`LocalArena`, `RayArena`) keeps one `StartupCalibration` per arena.
For each run it asks it for the run's `Limits` and hands them to `execute_run`; the
runner gives the supervisor its CPU-time and wall limits from them and classifies an
overrun with them. Every result of the root commit goes back to the calibration, so
that later runs on the same kind of slot get an allowance that follows the root's own
non-training time (imports, data, model build, the uncounted warm-up steps, saving).

The unit of the budget ("budget seconds"):
- on CPU, CPU seconds per thread of the slot. The harness's `BudgetClock` counts the
  training process's CPU time divided by its thread count; the supervisor measures the
  whole process tree's CPU seconds from outside and divides by the slot's threads. A
  busy machine changes how long a run takes, not how much it may compute, so the wall
  limit is generous (`WALL_FACTOR` times the budget and allowance) and its wall time is
  counted at the share of a core the machine could give (the supervisor's
  `wall_load_adjusted`): it catches a run that does not compute (a sleeper), not one
  that a busy machine starves;
- on CUDA, wall seconds: the wall limit is the budget plus the allowance.
A run whose outside-measured use exceeds budget + allowance is killed when the
supervisor sees it (live sampling, every 100 ms) and refused when the exact figure
after the run (rusage of the reaped tree) is over: status `timeout`, with a message
that says which limit and why.

What it does not do: measure (`arena.supervise` does), run anything, or compare runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from arena.records import RunResult, Status

WALL_FACTOR = 4.0  # CPU slots: wall limit = WALL_FACTOR x (budget + allowance)
OVERHEAD_FACTOR = 2.0  # a run may take this many times the root's start-up ...
SLACK_FRACTION = 0.1  # ... plus this fraction of the budget (the last step's overshoot) ...
MIN_SLACK_S = 5.0  # ... and at least this many budget seconds


@dataclass(frozen=True)
class Limits:
    """How much one run may use, in budget seconds (see the module docstring)."""

    budget_s: float
    allowance_s: float  # start-up and everything else that is not counted training
    device_type: str  # "cpu" | "cuda"
    threads: int  # the slot's threads (the CPU-time divisor)
    wall_factor: float = WALL_FACTOR
    basis: str = ""  # where the allowance comes from, for messages

    @property
    def on_cpu(self) -> bool:
        return self.device_type == "cpu"

    @property
    def limit_s(self) -> float:
        """Budget seconds a run may use in all."""
        return self.budget_s + self.allowance_s

    @property
    def cpu_limit_s(self) -> float | None:
        """CPU seconds of the whole process tree (CPU slots only)."""
        return self.limit_s * self.threads if self.on_cpu else None

    @property
    def wall_limit_s(self) -> float:
        return self.limit_s * (self.wall_factor if self.on_cpu else 1.0)

    def used_s(self, cpu_seconds: float, wall_seconds: float) -> float:
        """Budget seconds a run used, measured from outside."""
        return cpu_seconds / self.threads if self.on_cpu else wall_seconds

    def _terms(self) -> str:
        basis = f", {self.basis}" if self.basis else ""
        return (
            f"budget {self.budget_s:g} s + startup allowance {self.allowance_s:.3g} s{basis}"
        )

    def over(self, cpu_seconds: float, wall_seconds: float) -> bool:
        return self.used_s(cpu_seconds, wall_seconds) > self.limit_s

    def cpu_message(self, cpu_seconds: float, killed: bool) -> str:
        """Why a CPU run was stopped or refused for its CPU time."""
        what = "killed at the CPU-time limit" if killed else "refused: over its CPU-time budget"
        return (
            f"{what}: the process tree used {cpu_seconds:.1f} CPU s; the limit is "
            f"{self.cpu_limit_s:.1f} = ({self._terms()}) x {self.threads} thread(s). "
            "On CPU the budget counts CPU time, whatever the machine's load: train.py must "
            "stop when BudgetClock.done, and work before the clock starts (at import, in "
            "build_model, in the uncounted warm-up steps) or in other processes counts too"
        )

    def wall_message(self) -> str:
        terms = self._terms()
        if self.on_cpu and self.wall_factor != 1.0:
            terms = f"{self.wall_factor:g} x ({terms})"
        load = (
            "; wall time counted at the share of a core the machine could give it"
            if self.on_cpu else ""
        )
        return (
            f"killed at the wall limit of {self.wall_limit_s:.0f} s ({terms}){load}; "
            "train.py must stop when BudgetClock.done"
        )


def used_overhead_s(result: RunResult, budget_s: float, threads: int) -> float | None:
    """Budget seconds a finished run used beyond its budget (its start-up and other
    uncounted work), or None when it was not measured."""
    if result.status is not Status.EVALUATED:
        return None
    if result.device_type == "cpu":
        if result.cpu_seconds is None:
            return None
        used = result.cpu_seconds / threads
    else:
        if result.training_seconds is None:
            return None
        used = result.training_seconds
    return max(0.0, used - budget_s)


class StartupCalibration:
    """The root's measured start-up per kind of slot (device type and threads; the
    largest over the root's runs, so a mixed cluster gets its slowest device's), and the
    allowance that follows it.

    Until the root has been measured on a kind of slot, runs there get `default_s`
    (the arena's `startup_allowance_s`). Afterwards the allowance is
    OVERHEAD_FACTOR x the largest start-up the root showed there, plus the slack
    max(MIN_SLACK_S, SLACK_FRACTION x budget): generous enough for an honest child
    whose model builds or warms up more slowly, and far short of a run that trains
    before its clock starts or past its end. Thread safe."""

    def __init__(self, root_commit: str, default_s: float, wall_factor: float = WALL_FACTOR) -> None:
        self.root_commit = root_commit
        self.default_s = default_s
        self.wall_factor = wall_factor
        self._lock = threading.Lock()
        self._overhead: dict[tuple[str, int], float] = {}  # (device type, threads)


    def observe(self, result: RunResult, budget_s: float, threads: int) -> None:
        """Learn from one result; only the root's evaluated runs count."""
        if result.commit != self.root_commit:
            return
        overhead = used_overhead_s(result, budget_s, threads)
        if overhead is None:
            return
        k = (result.device_type, threads)
        with self._lock:
            self._overhead[k] = max(overhead, self._overhead.get(k, 0.0))

    def root_overhead_s(self, device_type: str, threads: int) -> float | None:
        with self._lock:
            return self._overhead.get((device_type, threads))

    def limits(self, budget_s: float, device_type: str, threads: int) -> Limits:
        root = self.root_overhead_s(device_type, threads)
        if root is None:
            allowance, basis = self.default_s, ""
        else:
            slack = max(MIN_SLACK_S, SLACK_FRACTION * budget_s)
            allowance = OVERHEAD_FACTOR * root + slack
            basis = (
                f"{OVERHEAD_FACTOR:g} x the root's measured start-up {root:.1f} s "
                f"+ {slack:.1f} s"
            )
        return Limits(budget_s, allowance, device_type, max(1, threads), self.wall_factor, basis)
