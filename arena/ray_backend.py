"""RayArena: the same arena API as LocalArena, one Ray task per candidate run.

Flow: `submit(RunRequest)` starts a Ray task (`num_gpus=1` on GPU clusters, else
`num_cpus` = the threads of one slot); inside the task `arena.execute.execute_run`
does exactly what it does locally (guards, worktree, supervised sandboxed training,
trusted evaluation), pinned to the GPU Ray assigned. `poll` returns results as tasks
finish (`ray.wait`); `cancel` interrupts a task (Ray raises KeyboardInterrupt in it,
the task cancels its supervisor, which kills the candidate's process tree and removes
the worktree) and reports it as `proposed` ("cancelled").

Requirements past one machine: the run directory, the data cache and this package
must be at the same paths on every node (a shared filesystem), and bubblewrap
installed on each node for the sandbox. Ray is imported only when a RayArena is made.
What it does not do: start or size the cluster (call `ray.init` first).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from arena.budget import Limits, StartupCalibration
from arena.devices import Slot, cpu_name, detect_slots
from arena.execute import ArenaConfig, execute_run, run_name
from arena.local import check_data_dir
from arena.records import RunRequest, RunResult, Status
from arena.repo import ExperimentRepo
from arena.runner import PACKAGE_ROOT, RunHandle
from arena.sandbox import default_mem_limit_mb

log = logging.getLogger(__name__)


def _task(
    request: RunRequest,
    run_dir: str,
    data_dir: str,
    prepare_text: bytes,
    device_type: str,
    threads: int,
    config: ArenaConfig,
    logs_dir: str,
    name: str,
    limits: Limits,
) -> RunResult:
    """Body of one Ray task (runs on a worker node)."""
    import tempfile

    import ray

    if device_type == "cuda":
        gpu = int(ray.get_gpu_ids()[0])
        from arena.devices import cuda_devices

        names = dict(cuda_devices())
        slot = Slot(f"cuda:{gpu}", "cuda", names.get(gpu, "cuda"), gpu, threads)
    else:
        slot = Slot("cpu:ray", "cpu", cpu_name(), None, threads)
    repo = ExperimentRepo.open(run_dir)
    handle = RunHandle()
    box: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="evolve-harness-") as tmp:
        prepare = Path(tmp) / "prepare.py"
        prepare.write_bytes(prepare_text)

        def work() -> None:
            box.append(
                execute_run(
                    request,
                    repo,
                    Path(data_dir),
                    prepare,
                    slot,
                    config,
                    Path(logs_dir),
                    handle,
                    name,
                    limits,
                )
            )

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:  # ray.cancel: stop the candidate, clean up, then go
            handle.cancel()
            worker.join()
            raise
    return box[0]


class RayArena:
    """`submit`, `poll`, `cancel`, `free_slots`, `close` as in LocalArena, on Ray.

    slots: how many runs at once and of what kind (default: the GPUs Ray sees, else
    the local CPU slots of `detect_slots`)."""

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
        import ray

        if not ray.is_initialized():
            raise RuntimeError(
                "call ray.init() (or ray.init(address=...)) before making a RayArena"
            )
        self.repo = repo
        self.data_dir = check_data_dir(Path(data_dir))
        if slots is None:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            slots = (
                [Slot(f"cuda:{i}", "cuda", "cuda", i, 1) for i in range(gpus)]
                if gpus
                else detect_slots()
            )
        self.slots = list(slots)
        self.device_type = self.slots[0].device_type
        self.config = ArenaConfig(
            mem_limit_mb=mem_limit_mb or default_mem_limit_mb(len(self.slots)), **config
        )
        self.logs_dir = Path(logs_dir) if logs_dir else repo.run_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config.sandbox.log_startup()
        self._prepare = repo.read_bytes(repo.root_commit, "prepare.py")
        self._calibration = StartupCalibration(
            repo.root_commit, self.config.startup_allowance_s, self.config.wall_factor
        )
        resources = (
            {"num_gpus": 1, "num_cpus": 1}
            if self.device_type == "cuda"
            else {"num_cpus": self.slots[0].threads}
        )
        self._remote = ray.remote(max_retries=0, **resources)(_task).options(
            runtime_env={"env_vars": {"PYTHONPATH": str(PACKAGE_ROOT)}}
        )
        self._lock = threading.Lock()
        self._inflight: dict = {}  # ObjectRef -> RunRequest
        self._done: list[RunResult] = []
        self._closed = False

    def submit(self, request: RunRequest) -> None:
        if request.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {request.budget_s}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the arena is closed")
            name = run_name(request)
            ref = self._remote.remote(
                request,
                str(self.repo.run_dir),
                str(self.data_dir),
                self._prepare,
                self.device_type,
                self.slots[0].threads,
                self.config,
                str(self.logs_dir),
                name,
                self._calibration.limits(request.budget_s, self.device_type, self.slots[0].threads),
            )
            self._inflight[ref] = (request, name)

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        import ray

        with self._lock:
            out, self._done = self._done, []
            refs = list(self._inflight)
        if not refs:
            return out
        wait = 0 if out else timeout
        ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            with self._lock:
                entry = self._inflight.pop(ref, None)
            if entry is None:
                continue
            result = self._result(ref, *entry)
            self._calibration.observe(result, entry[0].budget_s, self.slots[0].threads)
            out.append(result)
        return out

    def _result(self, ref, request: RunRequest, name: str) -> RunResult:
        import ray

        try:
            return ray.get(ref)
        except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError):
            self._cleanup(name)
            return RunResult(
                candidate_id=request.candidate_id,
                commit=request.commit,
                seed=request.seed,
                status=Status.PROPOSED,
                message="cancelled by the arena; not measured",
            )
        except ray.exceptions.RayError as exc:
            log.error("ray task for %s failed: %s", request.candidate_id, exc)
            return RunResult(
                candidate_id=request.candidate_id,
                commit=request.commit,
                seed=request.seed,
                status=Status.CRASHED,
                message=f"arena error (not the candidate's fault; not measured): {exc}",
            )

    def _cleanup(self, name: str, wait_s: float = 15.0) -> None:
        """Ray reports a cancelled task at once; give the task's own cleanup (its
        supervisor kills the tree, then the worktree goes) time, then finish it here."""
        path = self.repo.worktrees_dir / name
        deadline = time.monotonic() + wait_s
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if path.exists():
            log.warning("removing the worktree of cancelled run %s", name)
            self.repo.remove_worktree(path)
        shutil.rmtree(self.repo.run_dir / "out" / name, ignore_errors=True)

    def cancel(self, candidate_id: str) -> int:
        import ray

        with self._lock:
            refs = [r for r, (req, _) in self._inflight.items() if req.candidate_id == candidate_id]
        for ref in refs:
            ray.cancel(ref, force=False)
        return len(refs)

    def free_slots(self) -> int:
        with self._lock:
            return max(0, len(self.slots) - len(self._inflight))

    def close(self) -> None:
        """Cancel what is still running and collect the results (cleanup included)."""
        import ray

        with self._lock:
            if self._closed:
                return
            self._closed = True
            refs = list(self._inflight)
        for ref in refs:
            ray.cancel(ref, force=False)
        for ref in refs:
            with self._lock:
                entry = self._inflight.pop(ref)
            self._done.append(self._result(ref, *entry))

    def __enter__(self) -> "RayArena":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
