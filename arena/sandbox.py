"""The sandbox a candidate (and the evaluator's model worker) runs in.

Flow: the runner asks `Sandbox.command(argv, ...)` for the command line that runs
`argv` confined, and `Sandbox.limits()` for the resource limits to set in the child
before it starts. `Sandbox.describe()` says, once at start-up, what is and is not
enforced on this machine. docs/threat_model.md is the long form.

With bubblewrap (`bwrap`) the process gets:
- new user, pid, network, ipc and uts namespaces: no network at all (not even
  loopback), no view of any process outside the sandbox, and when the sandbox's first
  process dies the kernel kills everything left inside it;
- an allow-listed, read-only filesystem: /usr (and the /bin, /lib symlinks), a few
  files of /etc, the Python installation, the harness data directory with its `eval/`
  directory hidden under an empty tmpfs, a private /tmp, a fresh /dev and /proc;
  nothing else (no home directory, no run directory, so no store and no other
  worktree, no raw downloads);
- write access to exactly the directories it is given (its worktree and output
  directory for training; none for the evaluator's worker), with `prepare.py` inside
  the worktree bound read-only over itself.
Always (with or without bubblewrap): an address-space ceiling (RLIMIT_AS) on CPU slots,
no core dumps, a parent-death signal, and the credential-free environment of
`arena.guards.scrub_env`.

What it does not do: limit CPU time or disk use inside the writable directories,
isolate the GPU (a CUDA candidate gets the device nodes of its pinned GPU through
/dev), or defend against kernel exploits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/alternatives",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt/conda")
PR_SET_PDEATHSIG = 1


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def python_roots() -> list[Path]:
    """Directories the Python installation and its packages live in."""
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent}
    for entry in sys.path:
        if (
            entry
            and os.path.isdir(entry)
            and (
                "site-packages" in entry
                or "dist-packages" in entry
                or entry.startswith(sys.base_prefix)
            )
        ):
            roots.add(Path(entry))
    # keep only the outermost directories
    resolved = sorted({r.resolve() for r in roots if r.exists()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for r in resolved:
        if not any(r.is_relative_to(o) for o in out):
            out.append(r)
    return out


@dataclass(frozen=True)
class Sandbox:
    """How candidates are confined. `use_bwrap=None` means: use bubblewrap when it is
    installed. `mem_limit_mb` is the address-space ceiling per process on CPU slots
    (and the resident-set ceiling the runner's watchdog enforces on every slot)."""

    mem_limit_mb: int
    use_bwrap: bool | None = None
    extra_ro: tuple[str, ...] = field(default_factory=tuple)

    @property
    def bwrap(self) -> str | None:
        if self.use_bwrap is False:
            return None
        path = bwrap_path()
        if path is None and self.use_bwrap:
            raise RuntimeError(
                "bubblewrap requested but `bwrap` is not installed (apt-get install bubblewrap)"
            )
        return path

    def describe(self) -> list[str]:
        """One line per property that is NOT enforced here (empty: all enforced)."""
        missing = []
        if self.bwrap is None:
            missing += [
                "bubblewrap not available: candidates have network access",
                "bubblewrap not available: candidates can read the evaluation splits (eval/), "
                "the store, other worktrees and anything the user can read",
                "bubblewrap not available: candidates can write anywhere the user can write, "
                "including prepare.py in their worktree (detected after the run, not prevented)",
                "bubblewrap not available: the evaluator imports candidate code in a process "
                "that can read the evaluation splits from disk",
                "bubblewrap not available: processes that escape the process group are found "
                "and killed by the supervisor (a subreaper), not by a pid namespace",
            ]
        return missing

    def log_startup(self) -> None:
        missing = self.describe()
        if not missing:
            log.info(
                "sandbox: bubblewrap %s, memory ceiling %d MB per candidate",
                self.bwrap,
                self.mem_limit_mb,
            )
        for line in missing:
            log.warning("sandbox NOT enforced: %s", line)

    def command(
        self,
        argv: Sequence[str],
        cwd: Path,
        writable: Sequence[Path] = (),
        readable: Sequence[Path] = (),
        data_dir: Path | None = None,
        readonly_files: Sequence[Path] = (),
        gpu: bool = False,
    ) -> list[str]:
        """`argv` wrapped in bubblewrap (or unchanged without it). `readable` paths are
        bound read-only, `writable` ones read-write, `data_dir` read-only with its
        eval/ hidden; `readonly_files` (inside a writable dir) are re-bound read-only."""
        bwrap = self.bwrap
        if bwrap is None:
            return list(argv)
        args = [
            bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ]
        args += ["--dev-bind", "/dev", "/dev"] if gpu else ["--dev", "/dev"]
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for f in ETC_FILES:
            if os.path.exists(f):
                args += ["--ro-bind", f, f]
        for root in python_roots():
            args += ["--ro-bind", str(root), str(root)]
        for extra in self.extra_ro:
            args += ["--ro-bind", extra, extra]
        if gpu:
            args += ["--ro-bind", "/sys", "/sys"]
        if data_dir is not None:
            data_dir = Path(data_dir).resolve()
            args += ["--ro-bind", str(data_dir), str(data_dir)]
            if (data_dir / "eval").exists():
                args += ["--tmpfs", str(data_dir / "eval")]
        for path in readable:
            p = str(Path(path).resolve())
            args += ["--ro-bind", p, p]
        for path in writable:
            p = str(Path(path).resolve())
            args += ["--bind", p, p]
        for path in readonly_files:
            p = str(Path(path).resolve())
            if os.path.exists(p):
                args += ["--ro-bind", p, p]
        args += ["--chdir", str(Path(cwd).resolve()), "--"]
        return args + list(argv)

    def limits(self, address_space: bool = True) -> Callable[[], None]:
        """The function to run in the child before exec: memory ceiling, no core dumps,
        SIGKILL when the supervisor dies. `address_space=False` on CUDA slots (the CUDA
        driver reserves far more virtual memory than it uses)."""
        limit = self.mem_limit_mb * 2**20

        def apply() -> None:
            if address_space:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        return apply


def default_mem_limit_mb(n_slots: int) -> int:
    """Each slot's share of 80% of the machine's memory."""
    import psutil

    total = psutil.virtual_memory().total // 2**20
    return max(1024, int(total * 0.8) // max(1, n_slots))
