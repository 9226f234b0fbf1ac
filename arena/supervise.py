"""The supervisor: a small trusted process that owns one candidate process tree.

Flow: `arena.runner` starts `python -m arena.supervise SPEC.json`; the supervisor makes
itself a child subreaper (so every descendant that escapes by double-forking or
`setsid` is re-parented to it, not to init), starts the command in a new process group
with its stdout and stderr going through a pipe to the log file (a thread appends them,
up to `log_cap_bytes`; past the cap it keeps only the last 64 KB, so the traceback is
kept and 200 MB of output are not), and then, every 100 ms:
- reaps the command when it exits;
- samples the memory of its whole process tree: the proportional PSS sum (psutil,
  smaps_rollup), so that pages shared between processes (libraries, copy-on-write pages
  after a fork) count once, not once per process, plus what the tree keeps in its
  sandboxes' RAM-backed scratch mounts (/tmp, /dev/shm: in no process's memory), and
  kills the tree when that passes the ceiling (the cheap RSS sum is read every tick,
  PSS only when the RSS sum could set a new peak: at most every 0.5 s, or at once near
  the ceiling);
- measures the CPU seconds of the whole tree (the reaped part from
  `getrusage(RUSAGE_CHILDREN)`, the live part from psutil) and kills the tree when
  they pass the CPU-time limit, if the spec sets one (CPU slots: the budget's unit
  there is CPU time, see `arena.budget`);
- kills the tree when the wall limit has passed; with `wall_load_adjusted` (CPU
  slots) wall time counts at the share of a core the machine could give a runnable
  thread (cores / runnable threads, from /proc/loadavg, at most 1), so a run starved by
  a busy machine is not killed for it while a sleeper still is.
Killing is SIGTERM to the process group, a grace period, then SIGKILL to the group and
to every remaining descendant. Whatever way the command ends, leftover descendants are
killed and reaped before the supervisor reports. SIGTERM to the supervisor itself
(the arena's cancel) kills the tree the same way.

Peak memory is measured from outside the candidate: the larger of
`getrusage(RUSAGE_CHILDREN).ru_maxrss` (max RSS of the largest process of the reaped
tree, escaped descendants included since the supervisor reaps them) and the largest
sampled tree figure (PSS sum + scratch, as above). On CUDA the runner adds NVML's
per-process figure. CPU time is measured the same way: after the run,
`getrusage(RUSAGE_CHILDREN)` (user + system) covers every reaped descendant, escaped
ones included.

It writes one JSON result (see `SupervisorResult`) and exits 0; it never interprets
the candidate's output (the runner classifies).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from arena.sandbox import SCRATCH_MOUNTS

CPUS = len(os.sched_getaffinity(0))
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
TICK_S = 0.1
LIVE_EVERY_S = 1.0  # how often the live peak memory is written for the arena (spec "live_path")
PSS_EVERY_S = 0.5  # PSS (smaps_rollup) at most this often unless near the ceiling
LOG_CAP_BYTES = 8 * 2**20  # default cap of one log file
LOG_TAIL_BYTES = 64 * 1024  # kept from the end of output past the cap


@dataclass(frozen=True)
class SupervisorResult:
    returncode: int | None  # negative: killed by that signal
    timed_out: bool
    mem_killed: bool  # the watchdog killed it at the memory ceiling
    cancelled: bool
    wall_s: float
    peak_rss_mb: float  # getrusage(RUSAGE_CHILDREN).ru_maxrss
    tree_peak_mb: float  # largest sampled tree figure (PSS sum + scratch mounts)
    gpu_peak_mb: float  # NVML per-process, 0 without a GPU
    leftovers_killed: int  # descendants still alive after the command ended
    error: str = ""
    scratch_peak_mb: float = 0.0  # largest use of the sandboxes' /tmp + /dev/shm
    log_dropped_bytes: int = 0  # output past the log cap, not kept
    cpu_seconds: float = 0.0  # user + system CPU time of the whole tree
    cpu_killed: bool = False  # the watchdog killed it at the CPU-time limit


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _tree_rss() -> int:
    """Summed resident memory of the tree. RSS counts shared pages (the CUDA and torch
    libraries mapped by every process) once per process, so when the cheap sum is over
    a limit callers confirm with `_tree_pss` (proportional shares, reads smaps)."""
    total = 0
    for p in _descendants():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _scratch_used() -> int:
    """Bytes stored in the scratch mounts of the tree's sandboxes: for each mount
    namespace of a descendant other than ours whose root is not ours (a sandbox that
    is still being set up still sees the machine's /tmp), counted once, the used size
    of its /tmp and /dev/shm (statvfs through /proc/PID/root). 0 without a sandbox."""
    try:
        mine = os.readlink("/proc/self/ns/mnt")
        root = os.stat("/")
    except OSError:
        return 0
    seen, total = set(), 0
    for p in _descendants():
        try:
            ns = os.readlink(f"/proc/{p.pid}/ns/mnt")
            theirs = os.stat(f"/proc/{p.pid}/root")
        except OSError:
            continue
        if ns == mine or ns in seen or (theirs.st_dev, theirs.st_ino) == (root.st_dev, root.st_ino):
            continue
        seen.add(ns)
        for mount in SCRATCH_MOUNTS:
            try:
                st = os.statvfs(f"/proc/{p.pid}/root{mount}")
            except OSError:
                continue
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


class _LogPump(threading.Thread):
    """Copies the command's output from a pipe to the log file, up to `cap` bytes;
    past it keeps a rolling tail of the last LOG_TAIL_BYTES and appends it, after one
    line saying how much was dropped, when the pipe closes."""

    def __init__(self, read_fd: int, path: str, cap: int) -> None:
        super().__init__(daemon=True)
        self.read_fd, self.path, self.cap = read_fd, path, cap
        self.dropped = 0
        self.error = ""

    def run(self) -> None:
        written, tail = 0, bytearray()
        try:
            with open(self.path, "ab", buffering=0) as log_file:
                while chunk := os.read(self.read_fd, 1 << 16):
                    room = max(0, self.cap - written)
                    if room:
                        log_file.write(chunk[:room])
                        written += min(room, len(chunk))
                    if len(chunk) > room:
                        tail += chunk[room:]
                        self.dropped += len(chunk) - room
                        del tail[:-LOG_TAIL_BYTES]
                if self.dropped:
                    kept = len(tail)
                    log_file.write(
                        f"\n# arena: output past the log cap of {self.cap // 2**20} MB was "
                        f"dropped ({self.dropped - kept} bytes); its last {kept} bytes "
                        "follow\n".encode()
                    )
                    log_file.write(bytes(tail))
        except OSError as exc:  # a full disk: keep draining so the command never blocks
            self.error = f"log writing failed: {exc}"
            while os.read(self.read_fd, 1 << 16):
                pass
        finally:
            os.close(self.read_fd)


def _tree_pss() -> int:
    total = 0
    for p in _descendants():
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
    return total


def _children_cpu() -> float:
    """CPU seconds of every descendant reaped so far (and of theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu() -> float:
    """CPU seconds of the whole tree: the reaped part plus, for each live descendant,
    its own time and that of the children it has waited for."""
    total = _children_cpu()
    for p in _descendants():
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_share() -> float:
    """The share of a core the machine can give a runnable thread now: 1 while there
    are no more runnable threads than cores, less on an oversubscribed machine."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 1.0
    return min(1.0, CPUS / max(1, runnable))


def _kill_all(sig: int) -> int:
    n = 0
    for p in _descendants():
        try:
            p.send_signal(sig)
            n += 1
        except psutil.Error:
            continue
    return n


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class _GpuSampler:
    """GPU memory of the candidate through NVML: per process, summed over the
    supervisor's tree; where NVML does not report the tree's pids (a container with
    its own pid namespace), the device's used memory above its level at start (one
    candidate per GPU makes that the candidate's)."""

    def __init__(self, enabled: bool) -> None:
        self.handles: list = []
        self.baseline: list[int] = []
        self.nvml = None
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            visible = os.environ.get("SUPERVISE_GPU_INDEX", "")
            indices = [int(v) for v in visible.split(",") if v.strip().isdigit()]
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self.baseline = [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles]
        except Exception as exc:  # no driver / no pynvml: report and carry on without GPU figures
            print(f"supervise: NVML unavailable ({exc})", file=sys.stderr)
            self.nvml = None

    def sample(self) -> float:
        if self.nvml is None:
            return 0.0
        pids = {p.pid for p in _descendants()}
        used = device = 0
        for h, base in zip(self.handles, self.baseline):
            try:
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(h)
                device += max(0, self.nvml.nvmlDeviceGetMemoryInfo(h).used - base)
            except Exception:  # transient NVML errors: skip this sample
                continue
            for proc in procs:
                if proc.pid in pids and proc.usedGpuMemory:
                    used += proc.usedGpuMemory
        return (used or device) / 2**20


def _write_live(path: str, peak_mb: float) -> None:
    """The peak memory so far, measured from outside, for `Arena.progress` (atomic replace)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump({"peak_mem_mb": peak_mb}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a live figure is a hint; the report at the end carries the measurement


def supervise(spec: dict) -> SupervisorResult:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the arena died: clean up, then go
    cancelled = False

    def on_term(signum, frame):  # noqa: ARG001
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    mem_limit = int(spec["mem_limit_mb"]) * 2**20
    address_space = bool(spec.get("address_space", True))

    def limits() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    gpu = _GpuSampler(bool(spec.get("gpu")))
    start = time.monotonic()
    read_fd, write_fd = os.pipe()
    pump = _LogPump(read_fd, spec["log_path"], int(spec.get("log_cap_bytes", LOG_CAP_BYTES)))
    # the pump thread starts after the fork (preexec_fn and threads do not mix); our
    # copy of the pipe's write end closes once the command has it
    with os.fdopen(write_fd, "wb", buffering=0) as log_pipe:
        try:
            proc = subprocess.Popen(
                spec["argv"],
                cwd=spec["cwd"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=log_pipe,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=limits,
                close_fds=True,
            )
        except OSError as exc:
            os.close(read_fd)
            return SupervisorResult(
                None,
                False,
                False,
                cancelled,
                0.0,
                0.0,
                0.0,
                0.0,
                0,
                error=f"could not start {spec['argv'][0]}: {exc}",
            )
    pump.start()
    pgid = proc.pid
    wall_limit = float(spec["wall_limit_s"])
    load_adjusted = bool(spec.get("wall_load_adjusted", False))
    wall_counted, last_tick = 0.0, start
    cpu_limit = spec.get("cpu_limit_s")
    cpu_used = 0.0
    cpu_killed = False
    grace = float(spec.get("term_grace_s", 3.0))
    returncode: int | None = None
    timed_out = mem_killed = False
    tree_peak = gpu_peak = scratch_peak = 0.0
    last_pss, pss = 0.0, 0  # when the PSS sum was last read, and its value
    killing_since: float | None = None
    live_path, last_live = spec.get("live_path"), 0.0

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        _kill_all(sig)

    while returncode is None:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = proc.pid, 0
        if pid == proc.pid:
            returncode = os.waitstatus_to_exitcode(status)
            break
        _reap_all()  # orphans re-parented to us
        if cpu_limit is not None:
            cpu_used = max(cpu_used, _tree_cpu())
        now = time.monotonic()
        scratch = _scratch_used()
        scratch_peak = max(scratch_peak, scratch / 2**20)
        # PSS <= RSS for every process: only an RSS sum above the peak can set a new one,
        # and a PSS sum older than the last RSS sum is bounded by it
        rss = _tree_rss()
        if rss + scratch > tree_peak * 2**20 and (
            rss + scratch > mem_limit or now - last_pss >= PSS_EVERY_S
        ):
            last_pss, pss = now, _tree_pss()
        pss = min(pss, rss)
        tree_peak = max(tree_peak, (pss + scratch) / 2**20)
        gpu_peak = max(gpu_peak, gpu.sample())
        if live_path and now - last_live >= LIVE_EVERY_S:
            last_live = now
            _write_live(live_path, gpu_peak or tree_peak)
        wall_counted += (now - last_tick) * (_machine_share() if load_adjusted else 1.0)
        last_tick = now
        if killing_since is None:
            if cancelled:
                killing_since = now
            elif wall_counted > wall_limit:
                timed_out, killing_since = True, now
            elif tree_peak * 2**20 > mem_limit:
                mem_killed, killing_since = True, now
            elif cpu_limit is not None and cpu_used > cpu_limit:
                cpu_killed, killing_since = True, now
            if killing_since is not None:
                signal_group(signal.SIGTERM)
        elif now - killing_since > grace:
            signal_group(signal.SIGKILL)
        time.sleep(TICK_S)
    proc.returncode = returncode  # we reaped it ourselves

    # The command is gone; nothing it started may outlive it.
    leftovers = len(_descendants())
    deadline = time.monotonic() + grace
    if leftovers:
        signal_group(signal.SIGTERM)
        while _descendants() and time.monotonic() < deadline:
            _reap_all()
            time.sleep(TICK_S)
    error = ""
    deadline = time.monotonic() + 10 * grace
    while _descendants():
        if time.monotonic() > deadline:  # e.g. stuck in uninterruptible I/O
            error = f"{len(_descendants())} descendant(s) survived SIGKILL"
            break
        _kill_all(signal.SIGKILL)
        _reap_all()
        time.sleep(0.02)
    _reap_all()
    wall = time.monotonic() - start
    pump.join(timeout=10 * grace)  # every writer is dead: the pipe is at its end
    if pump.error:
        error = f"{error}; {pump.error}" if error else pump.error
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    cpu_used = max(cpu_used, _children_cpu())
    return SupervisorResult(
        returncode,
        timed_out,
        mem_killed,
        cancelled,
        wall,
        peak,
        tree_peak,
        gpu_peak,
        leftovers,
        error,
        scratch_peak_mb=scratch_peak,
        log_dropped_bytes=pump.dropped,
        cpu_seconds=cpu_used,
        cpu_killed=cpu_killed,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m arena.supervise SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = supervise(spec)
    tmp = Path(argv[1] + ".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
