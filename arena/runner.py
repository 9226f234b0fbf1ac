"""The runner: one training run and one trusted evaluation of one candidate worktree.

Flow: `arena.LocalArena` (or the Ray backend) hands the runner a checked-out worktree,
an output directory, a device slot and a seed. The runner
1. starts `python train.py` in the worktree through the supervisor
   (`python -m arena.supervise`: own process group, the run's `arena.budget.Limits`
   (a CPU-time limit on CPU slots, a wall limit), memory ceiling, every descendant
   killed at the end), confined by the sandbox, with the contract's environment and
   nothing else (credentials scrubbed); stdout and stderr go to a log file that can be
   tailed while it runs;
2. classifies the outcome from the exit status, the supervisor's report and the log
   (crashed with the traceback tail, timeout (a limit, or a tree that used more than
   the budget allows), oom, contract_error: no checkpoint, or one over `MAX_CHECKPOINT_MB`);
3. when training ended cleanly, runs the evaluator (`python -m arena.evaluate`, itself
   under a supervisor) and takes val_bpb, test_bpb and the causality verdict from it.
The numbers the candidate printed (the `---` summary block) and its claimed.json are
kept in `claimed` and never used.

What it does not do: choose what to run, check the commit (guards), or manage slots.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from arena.budget import Limits
from arena.devices import Slot
from arena.guards import scrub_env
from arena.progress import live_memory_path
from arena.records import Status
from arena.sandbox import BWRAP_ENV, Sandbox
from arena.supervise import SupervisorResult
from prepare import CPU_THREAD_ENV

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
OOM_PATTERNS = re.compile(
    r"(MemoryError|can't allocate memory|Cannot allocate memory|CUDA out of memory|"
    r"OutOfMemoryError|std::bad_alloc|DefaultCPUAllocator: not enough memory)"
)
MAX_CLAIMED_BYTES = 64 * 1024
MAX_CHECKPOINT_MB = 2048  # model.pt larger than this is refused (a contract error)
TAIL_LINES = 15
STALE_HEARTBEAT_S = 300.0  # a load-adjusted supervisor silent this long is stuck


@dataclass(frozen=True)
class Outcome:
    """What one run produced. `status` RUNNING after training means: ended cleanly,
    go evaluate; after evaluation it is the final status."""

    status: Status
    message: str
    val_bpb: float | None = None
    test_bpb: float | None = None
    peak_mem_mb: float | None = None
    train_wall_s: float | None = None
    train_cpu_s: float | None = None  # CPU seconds of the training process tree
    eval_wall_s: float | None = None
    claimed: dict | None = None


class Cancelled(Exception):
    """The run was cancelled by the arena."""


class RunHandle:
    """Lets another thread cancel the run in progress (SIGTERM to its supervisor, and
    to the handles linked with `also`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._linked: list[RunHandle] = []
        self.cancelled = False

    def attach(self, proc: subprocess.Popen | None) -> None:
        with self._lock:
            self._proc = proc
            if proc is not None and self.cancelled:
                proc.terminate()

    def also(self, other: RunHandle) -> None:
        """Cancelling this handle cancels `other` too (at once if it already was)."""
        with self._lock:
            self._linked.append(other)
            cancelled = self.cancelled
        if cancelled:
            other.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
            linked = list(self._linked)
        for other in linked:
            other.cancel()


def candidate_env(
    slot: Slot,
    seed: int,
    budget_s: float,
    out_dir: Path,
    data_dir: Path,
    home: Path,
    compile_cache: Path | None = None,
) -> dict[str, str]:
    """The contract's environment for a candidate: scrubbed base + EVOLVE_* variables,
    and torch.compile's caches in `compile_cache` (shared by the candidates of a run)."""
    env = scrub_env(os.environ)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    threads = str(slot.threads)
    env.update(slot.env())
    env.update(
        {
            "HOME": str(home),
            "EVOLVE_BUDGET_S": f"{budget_s:g}",
            "EVOLVE_SEED": str(seed),
            "EVOLVE_OUT": str(out_dir),
            "EVOLVE_DATA": str(data_dir),
            "EVOLVE_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            **CPU_THREAD_ENV,  # waiting threads sleep: CPU time does not depend on load
            "PYTHONHASHSEED": str(seed),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONNOUSERSITE": "1",
        }
    )
    if compile_cache is not None:
        env.update(compile_cache_env(compile_cache))
    return env


def compile_cache_env(cache: Path) -> dict[str, str]:
    """torch.compile's on-disk caches (inductor's FX graph and autograd caches, Triton's
    kernels) under `cache`, so that a candidate whose graphs an earlier one compiled
    loads them instead of compiling again."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def supervised(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    wall_limit_s: float,
    sandbox: Sandbox,
    slot: Slot,
    handle: RunHandle | None,
    term_grace_s: float = 3.0,
    address_space: bool = True,
    cpu_limit_s: float | None = None,
    wall_load_adjusted: bool = False,
    live_path: Path | None = None,
) -> dict:
    """Run `argv` under `python -m arena.supervise` and return its JSON report; with
    `live_path`, the supervisor keeps the peak memory so far there while it runs.

    A supervisor that is itself stuck is killed: past its wall limit plus a margin, or,
    when the wall limit is load-adjusted (it then runs slower than the clock on a busy
    machine), once its heartbeat (the live file, rewritten every second) is older
    than `STALE_HEARTBEAT_S`."""
    with tempfile.TemporaryDirectory(prefix="evolve-supervise-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        heartbeat = live_path or (Path(tmp) / "live.json" if wall_load_adjusted else None)
        spec = {
            "argv": argv,
            "cwd": str(cwd),
            "env": env,
            "log_path": str(log_path),
            "live_path": str(heartbeat) if heartbeat else None,
            "wall_limit_s": wall_limit_s,
            "cpu_limit_s": cpu_limit_s,
            "wall_load_adjusted": wall_load_adjusted,
            "mem_limit_mb": sandbox.mem_limit_mb,
            "address_space": address_space and slot.device_type == "cpu",
            "term_grace_s": term_grace_s,
            "gpu": slot.device_type == "cuda",
        }
        spec_path.write_text(json.dumps(spec))
        sup_env = scrub_env(os.environ)
        sup_env["PYTHONPATH"] = str(PACKAGE_ROOT)
        if slot.cuda_index is not None:
            sup_env["SUPERVISE_GPU_INDEX"] = str(slot.cuda_index)
        proc = subprocess.Popen(
            [sys.executable, "-m", "arena.supervise", str(spec_path), str(result_path)],
            env=sup_env,
            cwd=str(PACKAGE_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if handle is not None:
            handle.attach(proc)
        try:
            # The supervisor enforces the wall limit itself; this outer watch only
            # catches a supervisor that is itself stuck.
            deadline = time.monotonic() + wall_limit_s + 10 * term_grace_s + 30
            started = time.time()
            while True:
                try:
                    _, err = proc.communicate(timeout=5.0)
                    break
                except subprocess.TimeoutExpired:
                    alive = (_heartbeat_age(heartbeat, started) < STALE_HEARTBEAT_S if wall_load_adjusted and heartbeat
                             else time.monotonic() < deadline)
                    if not alive:
                        proc.kill()
                        _, err = proc.communicate()
                        raise RuntimeError(f"supervisor for {argv[-1]} did not finish; killed it") from None
        finally:
            if handle is not None:
                handle.attach(None)
        if not result_path.exists() and handle is not None and handle.cancelled:
            # cancelled so early that SIGTERM ended the supervisor before it set its
            # handler (so before it started the command): a cancelled run, nothing to kill
            return asdict(
                SupervisorResult(
                    returncode=None,
                    timed_out=False,
                    mem_killed=False,
                    cancelled=True,
                    wall_s=0.0,
                    peak_rss_mb=0.0,
                    tree_peak_mb=0.0,
                    gpu_peak_mb=0.0,
                    leftovers_killed=0,
                )
            )
        if not result_path.exists():
            raise RuntimeError(
                f"supervisor exited {proc.returncode} without a report: "
                f"{err.decode(errors='replace').strip()[-500:]}"
            )
        report = json.loads(result_path.read_text())
    if report.get("error") and report.get("returncode") is None:
        raise RuntimeError(report["error"])
    if report.get("error"):
        log.error("supervisor: %s", report["error"])
    return report


def _heartbeat_age(path: Path, started: float) -> float:
    """Seconds since the supervisor last wrote its live file (since `started` before the first)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return time.time() - started


def log_tail(path: Path, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def traceback_tail(text: str, lines: int = TAIL_LINES) -> str:
    start = text.rfind("Traceback (most recent call last):")
    chunk = text[start:] if start >= 0 else text
    tail = [ln for ln in chunk.strip().splitlines() if ln.strip()][-lines:]
    return "\n".join(tail)[-2000:]


def parse_summary(text: str) -> dict:
    """The candidate's own last `---` block (autoresearch format), values as floats
    where they parse. Informational only."""
    lines = text.splitlines()
    if "---" not in lines:
        return {}
    start = len(lines) - lines[::-1].index("---")
    out: dict = {}
    for line in lines[start:]:
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or " " in key:
            break
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value[:200]
    return out


def read_claimed(out_dir: Path, log_text: str) -> dict:
    claimed: dict = {}
    path = out_dir / "claimed.json"
    try:
        # never follow a link the candidate planted (it could point anywhere)
        if not path.is_symlink() and path.is_file() and path.stat().st_size <= MAX_CLAIMED_BYTES:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                claimed.update(data)
    except (OSError, ValueError) as exc:
        claimed["claimed_json_error"] = str(exc)[:200]
    claimed.update(parse_summary(log_text))
    return claimed


def classify_training(
    report: dict,
    log_text: str,
    out_dir: Path,
    limits: Limits,
    prepare_changed: bool,
    max_checkpoint_mb: float = MAX_CHECKPOINT_MB,
) -> tuple[Status, str]:
    rc = report["returncode"]
    cpu = report.get("cpu_seconds", 0.0)
    if report["cancelled"]:
        return Status.PROPOSED, "cancelled by the arena before it finished; not measured"
    if report.get("cpu_killed"):
        return Status.TIMEOUT, limits.cpu_message(cpu, killed=True)
    if report["timed_out"]:
        return Status.TIMEOUT, limits.wall_message()
    if report["mem_killed"]:
        scratch = report.get("scratch_peak_mb", 0.0)
        kept = f", {scratch:.0f} MB of it kept in /tmp and /dev/shm" if scratch >= 1 else ""
        return Status.OOM, (
            f"killed at the memory ceiling ({report['tree_peak_mb']:.0f} MB "
            f"across its processes{kept})"
        )
    if prepare_changed:
        return Status.CONTRACT_ERROR, (
            "prepare.py in the worktree was modified during the run; "
            "the harness must not be touched; results discarded"
        )
    if rc != 0:
        tail = traceback_tail(log_text)
        if OOM_PATTERNS.search(tail):
            return Status.OOM, f"out of memory (ceiling applies to every candidate):\n{tail}"
        if rc == -9:
            return Status.OOM, (
                "killed by SIGKILL from outside the arena (most likely the "
                f"kernel's OOM killer):\n{tail}"
            )
        return Status.CRASHED, f"exited with code {rc}:\n{tail}"
    if limits.on_cpu and limits.over(cpu, report["wall_s"]):
        return Status.TIMEOUT, limits.cpu_message(cpu, killed=False)
    missing = [n for n in ("model.pt", "build.json") if not _regular_file(out_dir / n)]
    if missing:
        return Status.CONTRACT_ERROR, (
            f"exited 0 without a checkpoint ({', '.join(missing)} missing "
            "in EVOLVE_OUT); train.py must call prepare.save_for_eval"
        )
    size_mb = (out_dir / "model.pt").stat().st_size / 2**20
    if size_mb > max_checkpoint_mb:
        return Status.CONTRACT_ERROR, (
            f"model.pt is {size_mb:.0f} MB, over the checkpoint cap of {max_checkpoint_mb} MB; "
            "save only the model's weights (prepare.save_for_eval) and keep the model smaller"
        )
    return Status.RUNNING, "trained"


def _regular_file(path: Path) -> bool:
    """A regular file, not a link the candidate planted (it could point anywhere)."""
    return path.is_file() and not path.is_symlink()


def run_candidate(
    *,
    worktree: Path,
    out_dir: Path,
    log_path: Path,
    data_dir: Path,
    trusted_prepare: Path,
    slot: Slot,
    seed: int,
    budget_s: float,
    sandbox: Sandbox,
    startup_allowance_s: float = 60.0,
    eval_timeout_s: float = 600.0,
    term_grace_s: float = 3.0,
    handle: RunHandle | None = None,
    compile_cache: Path | None = None,
    max_checkpoint_mb: float = MAX_CHECKPOINT_MB,
    limits: Limits | None = None,
    warm_evaluator: bool = False,
) -> Outcome:
    """Train `worktree`'s train.py and evaluate it. Never raises for candidate faults:
    every failure is an Outcome with a status and a message. `compile_cache`: the
    commit's directory for torch.compile's caches (writable in the sandbox; the
    evaluator never uses it). `limits` default to the budget plus
    `startup_allowance_s` on this slot. `warm_evaluator`: start the evaluator while the
    candidate trains (`WarmEvaluator`), so that its start-up is off the slot's clock."""
    if limits is None:
        limits = Limits(budget_s, startup_allowance_s, slot.device_type, slot.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The code that is evaluated is the code that was committed: train.py as checked
    # out, before the candidate runs (it could rewrite itself or drop modules beside it).
    committed_train = (worktree / "train.py").read_bytes()
    trusted = trusted_prepare.read_bytes()
    source = out_dir.parent / f"{out_dir.name}.src"  # what the evaluator's worker imports
    home = out_dir / "home"
    home.mkdir(exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if compile_cache is not None:
        compile_cache.mkdir(parents=True, exist_ok=True)
        compile_cache = compile_cache.resolve()
    env = candidate_env(
        slot, seed, budget_s, out_dir.resolve(), Path(data_dir).resolve(), home, compile_cache
    )
    argv = sandbox.command(
        [sys.executable, "train.py"],
        cwd=worktree,
        writable=[worktree, out_dir, *([compile_cache] if compile_cache else [])],
        data_dir=data_dir,
        readonly_files=[worktree / "prepare.py"],
        gpu=slot.device_type == "cuda",
    )
    with open(log_path, "ab") as f:
        f.write(
            f"# arena: train.py on {slot.name} ({slot.device_name}), seed {seed}, "
            f"budget {budget_s:g} s\n".encode()
        )
    evaluation = dict(
        worktree=source,
        out_dir=out_dir,
        log_path=log_path.with_suffix(".eval.log"),
        data_dir=data_dir,
        trusted_prepare=trusted_prepare,
        slot=slot,
        sandbox=sandbox,
        eval_timeout_s=eval_timeout_s,
        term_grace_s=term_grace_s,
    )
    warm = None
    try:
        if warm_evaluator:
            write_source(source, committed_train, trusted)
            warm = WarmEvaluator(**evaluation, wait_s=2 * limits.wall_limit_s + 60)
        report = supervised(
            argv,
            worktree,
            env,
            log_path,
            limits.wall_limit_s,
            sandbox,
            slot,
            handle,
            term_grace_s,
            cpu_limit_s=limits.cpu_limit_s,
            wall_load_adjusted=limits.on_cpu,
            live_path=live_memory_path(log_path),
        )
        live_memory_path(log_path).unlink(missing_ok=True)
        text = log_tail(log_path)
        try:
            prepare_changed = (worktree / "prepare.py").read_bytes() != trusted
        except OSError:
            prepare_changed = True
        status, message = classify_training(
            report, text, out_dir, limits, prepare_changed, max_checkpoint_mb
        )
        claimed = read_claimed(out_dir, text)
        peak = max(report["peak_rss_mb"], report["tree_peak_mb"])
        if slot.device_type == "cuda":
            peak = report["gpu_peak_mb"] or None  # GPU memory is the figure that matters there
        common = dict(
            peak_mem_mb=peak,
            train_wall_s=report["wall_s"],
            train_cpu_s=report.get("cpu_seconds"),
            claimed=claimed,
        )
        if status is not Status.RUNNING:
            return Outcome(status, message, **common)
        if handle is not None and handle.cancelled:
            return Outcome(
                Status.PROPOSED, "cancelled by the arena before evaluation; not measured", **common
            )
        write_source(source, committed_train, trusted)  # as committed, whatever happened since
        verdict = warm.go(handle) if warm is not None else None
        if verdict is None:  # cold, or the warm evaluator did not make it to the go
            verdict = evaluate(**evaluation, handle=handle)
        ev_status, ev_message, val_bpb, test_bpb, eval_wall = verdict
        return Outcome(
            ev_status, ev_message, val_bpb=val_bpb, test_bpb=test_bpb, eval_wall_s=eval_wall, **common
        )
    finally:
        if warm is not None:
            warm.stop()
        shutil.rmtree(source, ignore_errors=True)


def write_source(source: Path, train_py: bytes, prepare_py: bytes) -> None:
    """The files the evaluator's worker sees as the worktree: train.py as committed and
    the trusted prepare.py."""
    source.mkdir(exist_ok=True)
    (source / "train.py").write_bytes(train_py)
    (source / "prepare.py").write_bytes(prepare_py)


def evaluator_command(
    *,
    worktree: Path,
    out_dir: Path,
    data_dir: Path,
    trusted_prepare: Path,
    slot: Slot,
    sandbox: Sandbox,
    eval_timeout_s: float,
    result_path: Path,
    go_path: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `python -m arena.evaluate` for one trained candidate."""
    argv = [
        sys.executable,
        "-m",
        "arena.evaluate",
        "--worktree",
        str(worktree.resolve()),
        "--out",
        str(out_dir.resolve()),
        "--data",
        str(Path(data_dir).resolve()),
        "--prepare",
        str(trusted_prepare.resolve()),
        "--device",
        "cuda" if slot.device_type == "cuda" else "cpu",
        "--threads",
        str(slot.threads),
        "--result",
        str(result_path),
        "--mem-limit-mb",
        str(sandbox.mem_limit_mb),
        "--sandbox",
        "on" if sandbox.bwrap else "off",  # the evaluator confines its worker as training was
        "--timeout-s",
        str(eval_timeout_s),
        *(["--go", str(go_path)] if go_path is not None else []),
    ]
    env = scrub_env(os.environ)
    env.update(slot.env())
    env.update(
        {
            "PYTHONPATH": str(PACKAGE_ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(out_dir / "home"),
            "OMP_NUM_THREADS": str(slot.threads),
            BWRAP_ENV: sandbox.bwrap or "",  # the same bubblewrap as training's
        }
    )
    return argv, env


def supervise_evaluator(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    wall_limit_s: float,
    sandbox: Sandbox,
    slot: Slot,
    handle: RunHandle | None,
    term_grace_s: float,
) -> dict:
    """Run the evaluator under the supervisor; its report. The evaluator is trusted
    code: its address space is not capped (it forwards the ceiling to the candidate's
    model worker, which is)."""
    return supervised(
        argv, PACKAGE_ROOT, env, log_path, wall_limit_s, sandbox, slot, handle, term_grace_s,
        address_space=False,
    )


Verdict = tuple[Status, str, float | None, float | None, float]  # status, message, val, test, wall


def read_verdict(report: dict, result_path: Path, wall: float) -> Verdict | None:
    """The evaluator's verdict from its supervisor's report and result file; None when it
    wrote no result."""
    if report["cancelled"]:
        return (
            Status.PROPOSED,
            "cancelled by the arena during evaluation; not measured",
            None,
            None,
            wall,
        )
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return None
    finally:
        result_path.unlink(missing_ok=True)
    if result["status"] == "arena_error":  # not the candidate's fault
        raise RuntimeError(result["message"])
    status = Status(result["status"])
    val, test = result.get("val_bpb"), result.get("test_bpb")
    if status is Status.EVALUATED and not all(
        isinstance(v, float) and math.isfinite(v) for v in (val, test)
    ):
        return Status.NAN, "the evaluator produced a non-finite bpb", None, None, wall
    return status, result["message"], val, test, wall


def evaluate(
    *,
    worktree: Path,
    out_dir: Path,
    log_path: Path,
    data_dir: Path,
    trusted_prepare: Path,
    slot: Slot,
    sandbox: Sandbox,
    eval_timeout_s: float,
    term_grace_s: float = 3.0,
    handle: RunHandle | None = None,
) -> Verdict:
    """Run the trusted evaluator on a trained worktree: (status, message, val_bpb,
    test_bpb, wall seconds)."""
    result_path = out_dir.parent / f"{out_dir.name}.eval.json"
    argv, env = evaluator_command(
        worktree=worktree,
        out_dir=out_dir,
        data_dir=data_dir,
        trusted_prepare=trusted_prepare,
        slot=slot,
        sandbox=sandbox,
        eval_timeout_s=eval_timeout_s,
        result_path=result_path,
    )
    report = supervise_evaluator(
        argv, env, log_path, eval_timeout_s + 30, sandbox, slot, handle, term_grace_s
    )
    verdict = read_verdict(report, result_path, report["wall_s"])
    if verdict is None:
        tail = traceback_tail(log_tail(log_path))
        why = "timed out" if report["timed_out"] else f"exited {report['returncode']}"
        return (
            Status.CONTRACT_ERROR,
            f"the evaluator {why} without a result:\n{tail}",
            None,
            None,
            report["wall_s"],
        )
    return verdict


class WarmEvaluator:
    """The trusted evaluator started while the candidate trains (`run_candidate`'s
    `warm_evaluator`): it imports torch, loads the splits and starts its sandboxed model
    workers, which import torch and wait; nothing of the candidate runs and no device is
    touched before `go` (so the candidate's measured memory is its own). `go` lets it
    evaluate and returns its verdict; `stop` ends it unused. Its start-up then costs the
    slot nothing after training, where a cold `evaluate` pays it."""

    def __init__(self, *, wait_s: float, **evaluation) -> None:
        out_dir: Path = evaluation["out_dir"]
        self.evaluation = evaluation
        self.go_path = out_dir.parent / f"{out_dir.name}.eval.go"
        self.result_path = out_dir.parent / f"{out_dir.name}.eval.json"
        self.go_path.unlink(missing_ok=True)
        argv, env = evaluator_command(
            **{k: v for k, v in evaluation.items() if k not in ("log_path", "term_grace_s")},
            result_path=self.result_path,
            go_path=self.go_path,
        )
        self.handle = RunHandle()
        self._report: dict | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(
            target=self._supervise,
            args=(argv, env, wait_s + evaluation["eval_timeout_s"] + 30),
            name="warm-evaluator",
            daemon=True,
        )
        self._thread.start()

    def _supervise(self, argv: list[str], env: dict[str, str], wall_limit_s: float) -> None:
        e = self.evaluation
        try:
            self._report = supervise_evaluator(
                argv, env, e["log_path"], wall_limit_s, e["sandbox"], e["slot"], self.handle,
                e["term_grace_s"],
            )
        except Exception as exc:  # reported by go; the runner then evaluates cold
            self._error = exc

    def _signal(self, word: str) -> None:
        tmp = self.go_path.with_suffix(".tmp")
        tmp.write_text(word)
        os.replace(tmp, self.go_path)

    def go(self, handle: RunHandle | None) -> Verdict | None:
        """Evaluate now; None when the evaluator ended before the go or without a
        result (the caller then evaluates cold, and that verdict counts)."""
        if not self._thread.is_alive():
            log.warning("the warm evaluator ended before the go; evaluating cold")
            return None
        if handle is not None:
            handle.also(self.handle)
        t0 = time.monotonic()
        self._signal("go")
        self._thread.join()
        wall = time.monotonic() - t0
        if self._error is not None:
            log.warning("the warm evaluator failed (%s); evaluating cold", self._error)
            return None
        verdict = read_verdict(self._report, self.result_path, wall)
        if verdict is None:
            log.warning("the warm evaluator wrote no result; evaluating cold")
        return verdict

    def stop(self) -> None:
        """End it if it still runs (training failed or was cancelled), and tidy up."""
        if self._thread.is_alive():
            self._signal("stop")
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                self.handle.cancel()
                self._thread.join()
        self.go_path.unlink(missing_ok=True)
        self.result_path.unlink(missing_ok=True)
