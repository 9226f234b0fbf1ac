"""LocalArena: run candidates on this machine's device slots, several at once.

Implements `arena.protocol.Arena` (the contract: submit, poll, cancel, free_slots,
busy, close). A dispatcher thread hands queued requests to free slots (one run per
slot at a time); each run is managed by its own thread, which supervises subprocesses
(`arena.execute.execute_run`). Results come back in finishing order.

What it does not do: decide what to run or how to compare results.
"""

from __future__ import annotations

import collections
import logging
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Self

from arena.budget import StartupCalibration
from arena.devices import Slot, detect_slots
from arena.execute import ArenaConfig, execute_run, run_name
from arena.progress import RunProgress, parse_progress, read_live_memory, read_log
from arena.protocol import ArenaClosed
from arena.records import RunOutcome, RunRequest, RunResult, unmeasured
from arena.repo import ExperimentRepo
from arena.runner import RunHandle
from arena.sandbox import default_mem_limit_mb, sealed_paths

log = logging.getLogger(__name__)


def check_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "manifest.json").is_file():
        raise ValueError(
            f"no prepared data at {data_dir}; run `python prepare.py` (or `evolve prepare`)"
        )
    sealed_paths(data_dir)  # UnsealedData (a ValueError) for a cache without its sources
    return data_dir


def trusted_harness(repo: ExperimentRepo) -> Path:
    """A private copy of the root commit's prepare.py, for the evaluator to import."""
    path = Path(tempfile.mkdtemp(prefix="evolve-harness-")) / "prepare.py"
    path.write_bytes(repo.read_bytes(repo.root_commit, "prepare.py"))
    path.chmod(0o444)
    return path


class LocalArena:
    """Runs `RunRequest`s on `slots` (default: every GPU, else one CPU slot).

    Keyword settings are those of `ArenaConfig` (mem_limit_mb defaults to each slot's
    share of 80% of the machine's memory)."""

    def __init__(
        self,
        repo: ExperimentRepo,
        data_dir: str | Path,
        slots: list[Slot] | None = None,
        *,
        logs_dir: str | Path | None = None,
        mem_limit_mb: int | None = None,
        **config,
    ) -> None:
        self.repo = repo
        self.data_dir = check_data_dir(Path(data_dir))
        self.slots = list(slots) if slots is not None else detect_slots()
        if not self.slots:
            raise ValueError("no device slots to run on")
        self.config = ArenaConfig(
            mem_limit_mb=mem_limit_mb or default_mem_limit_mb(len(self.slots)), **config
        )
        self.logs_dir = Path(logs_dir) if logs_dir else repo.run_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config.sandbox.log_startup()
        self._prepare = trusted_harness(repo)
        self._calibration = StartupCalibration(
            repo.root_commit, self.config.startup_allowance_s, self.config.wall_factor
        )
        self._cond = threading.Condition()
        self._queue: collections.deque[RunRequest] = collections.deque()
        self._free: list[Slot] = list(self.slots)
        self._running: dict[int, tuple[RunRequest, RunHandle, threading.Thread]] = {}
        self._logs: dict[int, Path] = {}  # run id -> its log, while it runs
        self._results: queue.Queue[RunResult] = queue.Queue()
        self._closed = False
        self._next_id = 0
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="arena-dispatch", daemon=True
        )
        self._dispatcher.start()
        log.info(
            "arena: %d slot(s): %s; memory ceiling %d MB per candidate",
            len(self.slots),
            ", ".join(f"{s.name} [{s.device_name}, {s.threads} threads]" for s in self.slots),
            self.config.mem_limit_mb,
        )

    # ---- the API ------------------------------------------------------------------

    def submit(self, request: RunRequest) -> None:
        if request.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {request.budget_s}")
        with self._cond:
            if self._closed:
                raise ArenaClosed("the arena is closed; make a new one to run more")
            self._queue.append(request)
            self._cond.notify_all()

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        """Results finished since the last poll; waits up to `timeout` seconds (None:
        forever) for the first one when there is none yet."""
        out: list[RunResult] = []
        try:
            if timeout is None or timeout > 0:
                out.append(self._results.get(timeout=timeout))
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        return out

    def cancel(self, candidate_id: str, seed: int | None = None) -> int:
        """Cancel every queued and running run of `candidate_id` (only the one on `seed`
        when given); each still gives a CANCELLED result. Returns how many were cancelled."""
        def hit(req: RunRequest) -> bool:
            return req.candidate_id == candidate_id and seed in (None, req.seed)

        n = 0
        with self._cond:
            if self._closed:
                return 0
            keep: collections.deque[RunRequest] = collections.deque()
            for req in self._queue:
                if hit(req):
                    self._results.put(self._cancelled(req))
                    n += 1
                else:
                    keep.append(req)
            self._queue = keep
            for req, handle, _ in self._running.values():
                if hit(req):
                    handle.cancel()
                    n += 1
        return n

    def progress(self) -> dict[tuple[str, int], RunProgress]:
        """The progress lines each running run has written to its log so far, and the
        peak memory its supervisor has measured."""
        with self._cond:
            running = [(req, self._logs[run_id]) for run_id, (req, _, _) in self._running.items()
                       if run_id in self._logs]
        out = {}
        for req, path in running:
            points = parse_progress(read_log(path))
            if points:
                out[(req.candidate_id, req.seed)] = RunProgress(points, read_live_memory(path))
        return out

    def free_slots(self) -> int:
        with self._cond:
            return 0 if self._closed else max(0, len(self._free) - len(self._queue))

    def busy(self) -> int:
        """Runs queued or in progress."""
        with self._cond:
            return len(self._queue) + len(self._running)

    def close(self) -> None:
        """Cancel everything still queued or running, wait for the runs to clean up."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for req in self._queue:
                self._results.put(self._cancelled(req))
            self._queue.clear()
            threads = []
            for _, handle, thread in self._running.values():
                handle.cancel()
                threads.append(thread)
            self._cond.notify_all()
        for t in threads:
            t.join()
        self._dispatcher.join()
        shutil.rmtree(self._prepare.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------

    @staticmethod
    def _cancelled(req: RunRequest) -> RunResult:
        return unmeasured(req, RunOutcome.CANCELLED, "cancelled before it ran; not measured")

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._queue and self._free):
                    self._cond.wait()
                if self._closed:
                    return
                req = self._queue.popleft()
                slot = self._free.pop(0)
                run_id = self._next_id
                self._next_id += 1
                handle = RunHandle()
                name = run_name(req)
                self._logs[run_id] = self.logs_dir / f"{name}.log"
                thread = threading.Thread(
                    target=self._run,
                    args=(run_id, req, slot, handle, name),
                    name=f"arena-{slot.name}",
                    daemon=True,
                )
                self._running[run_id] = (req, handle, thread)
                thread.start()

    def _run(self, run_id: int, req: RunRequest, slot: Slot, handle: RunHandle, name: str) -> None:
        try:
            result = execute_run(
                req,
                self.repo,
                self.data_dir,
                self._prepare,
                slot,
                self.config,
                self.logs_dir,
                handle,
                name=name,
                limits=self._calibration.limits(req.budget_s, slot.device_type, slot.threads),
            )
            self._calibration.observe(result, req.budget_s, slot.threads)
        except Exception as exc:  # never lose a candidate
            log.exception("run of %s failed", req.candidate_id)
            result = unmeasured(
                req,
                RunOutcome.ARENA_ERROR,
                f"arena error (not the candidate's fault; not measured): {exc}",
                device_type=slot.device_type,
                device_name=slot.device_name,
            )
        self._results.put(result)
        with self._cond:
            self._running.pop(run_id, None)
            self._logs.pop(run_id, None)
            self._free.append(slot)
            self._free.sort(key=lambda s: self.slots.index(s))
            self._cond.notify_all()
