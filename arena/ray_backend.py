"""RayArena: the Arena protocol on a Ray cluster whose nodes share no paths.

Flow: `submit(RunRequest)` starts one Ray task (`num_gpus=1` on GPU clusters, else
`num_cpus` = the threads of one slot) and hands it everything by value through Ray:
a git bundle of the candidate commit (with its ancestry), the trusted prepare.py, the
arena package itself (`runtime_env` `py_modules`), and a reference to the data cache in
the object store. On its node the task
1. materializes the data cache once per node (under `$EVOLVE_NODE_DIR`, default the
   node's temp dir, then `evolve-ray/<node id>`), checking every file against the
   head's sha256 hashes (those of prepare.py's manifest, and of the files beside it);
2. clones the bundle into a private scratch directory and runs `arena.execute.
   execute_run` there: the same guards, worktree, supervised sandbox and trusted
   evaluator as on the head;
3. sends back the `RunResult` and the run's log files, and deletes its scratch.
The head writes the logs into its own logs directory and the git note on its own repo:
the head's store and repository stay the only ones written. A node that dies mid-run
gives a result with outcome ARENA_ERROR (redo it), never a lost candidate; a task that
outlives its node's raylet (it notices it was re-parented) stops its candidate itself.

Cancelling does not rely on Ray interrupting a running task (Ray's non-forced cancel
does not reliably interrupt a task that waits, ray-project/ray#32954): a small actor
on the head's node (`_Board`) holds the cancelled run names; a running task asks it
twice a second and, when told, cancels its supervisor (which kills the candidate's
process tree) and removes its worktree before returning a CANCELLED result. A task
that has not started yet is also withdrawn with `ray.cancel`, and one that starts
after being cancelled returns at once.

Live logs: a run's log reaches the head's logs directory when the run ends (a TUI
tailing a remote run sees it then). Requirements on each node: this Python
environment's packages (torch, numpy, psutil, GitPython), git, and bubblewrap for the
sandbox. The data cache travels through the object store, so the head's object store
must hold it. What it does not do: start or size the cluster (call `ray.init` first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from arena.budget import Limits, StartupCalibration
from arena.devices import Slot, cpu_name, detect_slots
from arena.errors import EvolveError
from arena.execute import ArenaConfig, execute_run, note_text, run_name
from arena.local import check_data_dir
from arena.progress import RunProgress
from arena.protocol import ArenaClosed
from arena.records import RunOutcome, RunRequest, RunResult, unmeasured
from arena.repo import ExperimentRepo
from arena.runner import PACKAGE_ROOT, RunHandle
from arena.sandbox import default_mem_limit_mb

log = logging.getLogger(__name__)

NODE_DIR_ENV = "EVOLVE_NODE_DIR"
CANCEL_POLL_S = 0.5
BOARD_TIMEOUT_S = 5.0  # one question to the board; a slow answer is asked again
CLOSE_WAIT_S = 120.0  # close(): how long cancelled tasks get to clean up
WARM_S = 60.0  # __init__: how long to wait for one warm worker per slot


class DataMismatch(EvolveError, RuntimeError):
    """A data file on a worker node does not match the head's hash."""


@dataclass(frozen=True)
class DataShipment:
    """The head's data cache, by value: `hashes` (relative path -> sha256) and, in
    `blob[0]`, an object-store reference to {relative path: bytes}. The reference sits
    in a list so that Ray does not fetch it for every task: a task fetches it only when
    its node has no copy named `key` yet."""

    key: str
    hashes: dict[str, str]
    blob: list


@dataclass(frozen=True)
class Shipment:
    """Everything one task needs, by value: no path of the head's is in it."""

    request: RunRequest
    name: str
    root: str
    bundle: bytes
    prepare: bytes
    data: DataShipment
    device_type: str
    threads: int
    config: ArenaConfig
    limits: Limits


@dataclass(frozen=True)
class Returned:
    """What a task sends back: the result, the run's log files by name, its node."""

    result: RunResult
    logs: dict[str, bytes]
    node_id: str


class _Board:
    """Ray actor on the head's node: which runs have started, which are cancelled, and
    how many warm-up tasks have arrived."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.cancelled: set[str] = set()
        self.warm = 0  # warm-up tasks that have arrived

    def arrive(self) -> int:
        """A warm-up task has started; how many have."""
        self.warm += 1
        return self.warm

    def arrivals(self) -> int:
        return self.warm

    def start(self, name: str) -> bool:
        """Mark `name` started; True when it was cancelled before it started."""
        self.started.add(name)
        return name in self.cancelled

    def cancel(self, name: str) -> bool:
        """Mark `name` cancelled; True when it has already started."""
        self.cancelled.add(name)
        return name in self.started

    def is_cancelled(self, name: str) -> bool:
        return name in self.cancelled

    def forget(self, name: str) -> None:
        self.started.discard(name)
        self.cancelled.discard(name)


# ---- the head's side -------------------------------------------------------------------


def ship_data(data_dir: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """Every file of the cache with its sha256; ValueError when a file disagrees with
    the manifest's hash (a corrupt cache is never shipped)."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    hashes: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(data_dir))
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        expected = manifest.get("files", {}).get(rel, {}).get("sha256", digest)
        if digest != expected:
            raise ValueError(
                f"{path} fails its hash check (corrupt cache); run `python prepare.py --force`"
            )
        hashes[rel], files[rel] = digest, content
    return hashes, files


def package_env() -> dict:
    """A task runtime_env that brings this arena package to any node through Ray: the
    package is zipped into Ray's GCS (content-addressed; uploaded only when missing)."""
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    except ImportError as exc:  # Ray moved its uploader: say what to do instead
        raise RuntimeError(
            "this Ray version cannot upload the arena package for tasks; pass "
            f"runtime_env={{'py_modules': ['{PACKAGE_ROOT / 'arena'}']}} to ray.init"
        ) from exc
    import ray

    scratch = ray._private.worker.global_worker.node.get_runtime_env_dir_path()
    env = {"py_modules": [str(PACKAGE_ROOT / "arena")], "excludes": ["__pycache__"]}
    env = upload_py_modules_if_needed(env, include_gitignore=False, scratch_dir=scratch, logger=log)
    env.pop("excludes", None)
    return env


def bundle_commit(repo: ExperimentRepo, commit: str) -> bytes:
    """A git bundle holding `commit` and its ancestry (read from the head's repo)."""
    sha = repo.resolve(commit)
    ref = f"refs/evolve/{sha}"
    git = ["git", "-C", str(repo.run_dir)]
    subprocess.run([*git, "update-ref", ref, sha], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="evolve-bundle-") as tmp:
        path = Path(tmp) / "c.bundle"
        subprocess.run([*git, "bundle", "create", str(path), ref], check=True, capture_output=True)
        return path.read_bytes()


class RayArena:
    """`arena.protocol.Arena` on Ray (the contract is there).

    slots: how many runs at once and of what kind (default: the GPUs Ray sees, else
    the local CPU slots of `detect_slots`). Keyword settings are those of `ArenaConfig`."""

    def __init__(
        self,
        repo: ExperimentRepo,
        data_dir: str | Path,
        slots: list[Slot] | None = None,
        *,
        logs_dir: str | Path | None = None,
        mem_limit_mb: int | None = None,
        **config: Any,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
        if not self.slots:
            raise ValueError("no device slots to run on")
        self.device_type = self.slots[0].device_type
        self.config = ArenaConfig(
            mem_limit_mb=mem_limit_mb or default_mem_limit_mb(len(self.slots)), **config
        )
        self.logs_dir = Path(logs_dir) if logs_dir else repo.run_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config.sandbox.log_startup()
        hashes, files = ship_data(self.data_dir)
        key = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:24]
        self._data = DataShipment(key, hashes, [ray.put(files)])
        self._root = repo.root_commit
        self._prepare = repo.read_bytes(self._root, "prepare.py")
        self._calibration = StartupCalibration(
            self._root, self.config.startup_allowance_s, self.config.wall_factor
        )
        self._bundles: dict[str, bytes] = {}
        runtime_env = package_env()
        here = ray.get_runtime_context().get_node_id()
        self._board = (
            ray.remote(num_cpus=0)(_Board)
            .options(
                runtime_env=runtime_env,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            )
            .remote()
        )
        resources = (
            {"num_gpus": 1, "num_cpus": 1}
            if self.device_type == "cuda"
            else {"num_cpus": self.slots[0].threads}
        )
        self._remote = ray.remote(max_retries=0, **resources)(_task).options(
            runtime_env=runtime_env
        )
        self._warm_up(ray.remote(max_retries=0, **resources)(_warm).options(runtime_env=runtime_env))
        self._lock = threading.Lock()
        self._inflight: dict[Any, tuple[RunRequest, str]] = {}  # ObjectRef -> run
        self._cancelled: set[str] = set()
        self._done: list[RunResult] = []
        self._closed = False

    # ---- the API ------------------------------------------------------------------

    def submit(self, request: RunRequest) -> None:
        if request.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {request.budget_s}")
        with self._lock:
            if self._closed:
                raise ArenaClosed("the arena is closed; make a new one to run more")
            bundle = self._bundles.get(request.commit)
        if bundle is None:
            bundle = bundle_commit(self.repo, request.commit)
        name = run_name(request)
        ship = Shipment(
            request=request,
            name=name,
            root=self._root,
            bundle=bundle,
            prepare=self._prepare,
            data=self._data,
            device_type=self.device_type,
            threads=self.slots[0].threads,
            config=dataclasses.replace(self.config, annotate=False),
            limits=self._calibration.limits(request.budget_s, self.device_type, self.slots[0].threads),
        )
        with self._lock:
            if self._closed:
                raise ArenaClosed("the arena is closed; make a new one to run more")
            self._bundles[request.commit] = bundle
            self._inflight[self._remote.remote(ship, self._board)] = (request, name)

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        import ray

        with self._lock:
            out, self._done = self._done, []
            refs = list(self._inflight)
        if not refs:
            if not out and timeout != 0:  # nothing in flight: do not let a caller spin
                time.sleep(0.1 if timeout is None else min(timeout, 0.1))
            return out
        ready, _ = ray.wait(refs, num_returns=1, timeout=0 if out else timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            with self._lock:
                entry = self._inflight.pop(ref, None)
            if entry is not None:
                result = self._result(ref, *entry)
                self._calibration.observe(result, entry[0].budget_s, self.slots[0].threads)
                out.append(result)
        return out

    def cancel(self, candidate_id: str, seed: int | None = None) -> int:
        with self._lock:
            if self._closed:
                return 0
            runs = [(r, n) for r, (req, n) in self._inflight.items()
                    if req.candidate_id == candidate_id and seed in (None, req.seed)]
            self._cancelled.update(n for _, n in runs)
        for ref, name in runs:
            self._stop(ref, name)
        return len(runs)

    def progress(self) -> dict[tuple[str, int], RunProgress]:
        """Nothing: a node's log reaches the head only with the run's result, so the
        evaluation cascade does not stop Ray runs early."""
        return {}

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closed else max(0, len(self.slots) - len(self._inflight))

    def busy(self) -> int:
        with self._lock:
            return len(self._inflight)

    def close(self) -> None:
        """Cancel what is still running and wait for it to clean up (at most
        CLOSE_WAIT_S; a task still running then is killed and reported cancelled)."""
        import ray

        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs = list(self._inflight.items())
            self._cancelled.update(n for _, (_, n) in runs)
        for ref, (_, name) in runs:
            self._stop(ref, name)
        refs = [ref for ref, _ in runs]
        if refs:
            _, late = ray.wait(refs, num_returns=len(refs), timeout=CLOSE_WAIT_S)
            for ref in late:
                log.warning("a cancelled Ray task did not finish in %.0f s; killing it", CLOSE_WAIT_S)
                ray.cancel(ref, force=True)
        results = []
        for ref, _ in runs:
            with self._lock:
                entry = self._inflight.pop(ref, None)
            if entry is not None:
                results.append(self._result(ref, *entry))
        with self._lock:
            self._done += results
        ray.kill(self._board)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------

    def _warm_up(self, warm: Any) -> None:
        """Start the board and one worker process per slot now, all at once, with the
        arena's runtime environment and modules loaded: Ray keeps the workers and gives
        them the runs, so a slot's first run does not wait for a process to start (12-20 s
        each on a loaded 2-core machine, against about 1 s per run after;
        bench/throughput.py). What a cluster cannot start within WARM_S starts with the
        first runs instead."""
        import ray

        deadline = time.monotonic() + WARM_S
        free = ray.available_resources()
        can = free.get("GPU", 0) if self.device_type == "cuda" else free.get("CPU", 0) / self.slots[0].threads
        n = min(len(self.slots), int(can))
        refs = [warm.remote(self._board, n, WARM_S) for _ in range(n)]
        board = self._board.is_cancelled.remote("")
        if refs:
            _, late = ray.wait(refs, num_returns=len(refs), timeout=WARM_S)
            for ref in late:
                ray.cancel(ref, force=True)
        ray.wait([board], timeout=max(0.0, deadline - time.monotonic()))

    def _stop(self, ref: Any, name: str) -> None:
        import ray

        started = ray.get(self._board.cancel.remote(name))
        if not started:  # withdraw it from Ray's queue; if it starts anyway it returns at once
            ray.cancel(ref, force=False)

    def _result(self, ref: Any, request: RunRequest, name: str) -> RunResult:
        import ray

        with self._lock:
            cancelled = name in self._cancelled
            self._cancelled.discard(name)
        try:
            returned: Returned = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._board.forget.remote(name)
            return unmeasured(request, RunOutcome.CANCELLED, "cancelled before it ran; not measured")
        except ray.exceptions.RayError as exc:  # a lost node or worker, or the arena's own bug
            # A task whose raylet died can live on for a while, and its candidate with it:
            # the board keeps it cancelled so that such an orphan stops and cleans up.
            self._board.cancel.remote(name)
            if cancelled:
                return unmeasured(request, RunOutcome.CANCELLED, "cancelled; not measured")
            log.error("ray task for %s failed: %s", request.candidate_id, exc)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return unmeasured(
                request,
                RunOutcome.ARENA_ERROR,
                f"arena error (not the candidate's fault; not measured): Ray: {first}",
            )
        self._board.forget.remote(name)
        for fname, content in returned.logs.items():
            (self.logs_dir / Path(fname).name).write_bytes(content)
        head_log = self.logs_dir / f"{name}.log"
        result = dataclasses.replace(
            returned.result, log_path=str(head_log) if head_log.is_file() else ""
        )
        if self.config.annotate and result.outcome is RunOutcome.FINISHED:
            try:
                self.repo.annotate(request.commit, note_text(result))
            except Exception as exc:  # noqa: BLE001 - a failed note loses no result; say so
                log.warning("could not write the git note for %s: %s", request.commit[:10], exc)
        return result


# ---- the worker node's side ---------------------------------------------------------------


def node_dir() -> Path:
    """This node's own working directory for the arena (data copies, run scratch)."""
    import ray

    base = Path(os.environ.get(NODE_DIR_ENV) or tempfile.gettempdir())
    return base / "evolve-ray" / ray.get_runtime_context().get_node_id()[:16]


def materialize_data(node: Path, data: DataShipment) -> Path:
    """The node's copy of the head's data cache, written once per node and checked
    file by file against the head's hashes. A copy is renamed into place only when
    complete, so a directory that exists is whole."""
    import ray

    target = node / "data" / data.key
    if not (target / "manifest.json").is_file():
        write_checked(target, ray.get(data.blob[0]), data.hashes)
    return target


def write_checked(target: Path, files: dict[str, bytes], hashes: dict[str, str]) -> None:
    """Write `files` as the directory `target` when every file matches `hashes` (and
    none is missing); DataMismatch otherwise, leaving nothing at `target`."""
    tmp = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        if set(files) != set(hashes):
            raise DataMismatch("the data cache arrived incomplete")
        for rel, content in files.items():
            if hashlib.sha256(content).hexdigest() != hashes[rel]:
                raise DataMismatch(f"data file {rel} arrived with the wrong hash")
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        try:
            tmp.rename(target)
        except OSError:  # another task on this node put it in place first
            if not (target / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clone_bundle(run_dir: Path, bundle: bytes, root: str) -> ExperimentRepo:
    """A private repository at `run_dir` holding the bundle's commits, `main` at root."""
    run_dir.mkdir(parents=True)
    path = run_dir.parent / f"{run_dir.name}.bundle"
    path.write_bytes(bundle)
    git = ["git", "-C", str(run_dir)]
    for args in (
        ["init", "-q"],
        ["fetch", "-q", str(path), "refs/evolve/*:refs/evolve/*"],
        ["update-ref", "refs/heads/main", root],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True)
    path.unlink()
    return ExperimentRepo.open(run_dir)


def _slot(device_type: str, threads: int) -> Slot:
    import ray

    if device_type == "cuda":
        from arena.devices import cuda_devices

        gpu = int(ray.get_gpu_ids()[0])
        names = dict(cuda_devices())
        return Slot(f"cuda:{gpu}", "cuda", names.get(gpu, "cuda"), gpu, threads)
    return Slot("cpu:ray", "cpu", cpu_name(), None, threads)


def _cancel_requested(board: Any, name: str) -> bool:
    """Whether the head cancelled run `name`; True when its board is gone (the arena
    that wanted the run no longer exists)."""
    import ray

    try:
        return bool(ray.get(board.is_cancelled.remote(name), timeout=BOARD_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:  # no answer yet: ask again at the next tick
        return False
    except ray.exceptions.RayActorError:
        log.warning("the arena's board is gone; stopping run %s", name)
        return True


def _warm(board: Any, n: int, limit_s: float) -> int:
    """Body of a warm-up task: load the arena's run path, then hold this worker until all
    `n` warm-up tasks have started (so that each has its own worker process)."""
    import ray

    import arena.execute  # noqa: F401 - loaded now so that the first run does not wait for it

    arrived, deadline = ray.get(board.arrive.remote()), time.monotonic() + limit_s
    while arrived < n and time.monotonic() < deadline:
        time.sleep(0.2)
        arrived = ray.get(board.arrivals.remote())
    return arrived


def _task(ship: Shipment, board: Any) -> Returned:
    """Body of one Ray task (runs on a worker node)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    request = ship.request
    if ray.get(board.start.remote(ship.name)):
        return Returned(
            unmeasured(request, RunOutcome.CANCELLED, "cancelled before it ran; not measured"),
            {},
            node_id,
        )
    node = node_dir()
    scratch = node / "runs" / ship.name
    logs = scratch / "logs"
    handle = RunHandle()
    box: list[RunResult] = []
    slot = _slot(ship.device_type, ship.threads)
    try:
        try:
            data_dir = materialize_data(node, ship.data)
            repo = clone_bundle(scratch / "run", ship.bundle, ship.root)
            prepare = scratch / "prepare.py"
            prepare.write_bytes(ship.prepare)
            logs.mkdir()
        except (OSError, subprocess.CalledProcessError, DataMismatch, ray.exceptions.RayError) as exc:
            return Returned(
                unmeasured(
                    request,
                    RunOutcome.ARENA_ERROR,
                    f"arena error on node {node_id[:12]} (not the candidate's fault; "
                    f"not measured): {exc}",
                    device_type=slot.device_type,
                    device_name=slot.device_name,
                ),
                {},
                node_id,
            )

        # this machine's compile cache for the run: kept across candidates and clusters
        config = dataclasses.replace(
            ship.config, compile_cache_dir=str(node.parent / "compile" / ship.root[:16])
        )

        def work() -> None:
            box.append(
                execute_run(
                    request, repo, data_dir, prepare, slot, config, logs, handle, ship.name, ship.limits
                )
            )

        # A Ray worker is its raylet's child: a new parent means this node's raylet died,
        # the head has given the run up (arena error), and the candidate must stop.
        raylet = os.getppid()
        worker = threading.Thread(target=work, name=f"run-{ship.name}", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(CANCEL_POLL_S)
                if handle.cancelled:
                    continue
                if os.getppid() != raylet:
                    log.warning("this node's raylet is gone; stopping run %s", ship.name)
                    handle.cancel()
                elif _cancel_requested(board, ship.name):
                    handle.cancel()
        except BaseException:  # a ray.cancel that reached a started task: stop, clean up
            handle.cancel()
            worker.join()
            raise
        if not box:  # execute_run itself raised (it logged why)
            result = unmeasured(
                request,
                RunOutcome.ARENA_ERROR,
                "arena error (not the candidate's fault; not measured): the run raised "
                f"on node {node_id[:12]}",
                device_type=slot.device_type,
                device_name=slot.device_name,
            )
        else:
            result = box[0]
        sent = {p.name: p.read_bytes() for p in logs.iterdir() if p.is_file()}
        return Returned(result, sent, node_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
