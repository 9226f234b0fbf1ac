"""Prerequisites of a real run, checked in seconds before anything trains.

Flow: `evolve` calls `check_all` after reading the run's settings and before it creates
the run directory (a new run) or starts the arena (a resumed one). Each check either
returns a short line for the narrative ("data: ...") or raises `PreflightError` whose
message is one line saying what to do: the device slots, the prepared data, free disk
space, the sandbox (bubblewrap, or the user's explicit --unconfined), and every
persona's model (API key present, endpoint answering, the embedded model's parts).

What it does not do: call a model (a key that is present but wrong is only found by the
first call, which stops the run with LLMConfigError), or decide anything about the run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from arena.errors import EvolveError

MIN_FREE_MB = 500  # checkpoints, logs and worktrees of a few runs at a time
CONNECT_TIMEOUT_S = 3.0


class PreflightError(EvolveError):
    """A prerequisite of the run is missing; the message says what to do."""


@dataclass(frozen=True)
class Preflight:
    data_dir: Path
    slots: list[Any]
    lines: list[str]  # one per check, for the narrative


def check_data(data_dir: Path) -> Path:
    from arena.local import check_data_dir

    try:
        return check_data_dir(data_dir)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_slots(devices: tuple[str, ...]) -> list[Any]:
    from arena.devices import detect_slots

    try:
        return detect_slots(",".join(devices) if devices else None)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_sandbox(unconfined: bool) -> str:
    """bubblewrap must be installed and work here, unless the user consented to
    running candidates without it (--unconfined)."""
    from arena.sandbox import Sandbox, bwrap_path

    if bwrap_path() is None:
        if unconfined:
            return "sandbox: NONE (bubblewrap missing; --unconfined given: candidates can use the network and read your files)"
        raise PreflightError("bubblewrap (bwrap) is not installed, so candidates would run unconfined "
                             "(network, your files): install it (apt-get install bubblewrap) or pass "
                             "--unconfined to accept that")
    argv = Sandbox(mem_limit_mb=1024).command(["true"], cwd=Path("/"))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        failed = proc.returncode != 0
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, why = True, str(exc)
    if failed:
        if unconfined:
            return f"sandbox: NONE (bubblewrap fails here: {why}; --unconfined given)"
        raise PreflightError(f"bubblewrap is installed but cannot start a sandbox here ({why}): allow "
                             "unprivileged user namespaces, or pass --unconfined to run candidates without it")
    return f"sandbox: bubblewrap ({bwrap_path()})"


def check_endpoint(api_base: str, model: str) -> None:
    """The server at api_base accepts a TCP connection within a few seconds."""
    url = urlparse(api_base)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as exc:
        raise PreflightError(f"model {model}: nothing answers at {api_base} ({exc.strerror or exc}); "
                             "start that server or fix api_base in program.md") from None


def check_models(personas_config: dict, local_model: str = "small") -> list[str]:
    """Every enabled persona's model has its key and an answering endpoint; the embedded
    model (`local_model`: agents.local_model.LOCAL_MODEL_CHOICES), when some persona
    needs it, is installed. The random-move baseline needs nothing."""
    from agents.llm import MissingAPIKey, check_api_key
    from agents.personas import RANDOM_MODEL, PersonaConfigError, load_personas

    try:
        personas = load_personas(personas_config)
    except PersonaConfigError as exc:
        raise PreflightError(str(exc)) from None
    lines, seen = [], set()
    for p in sorted(personas.values(), key=lambda p: p.name):
        if p.model == RANDOM_MODEL:
            continue
        if p.model is None:
            key = ("embedded", None)
            if key not in seen:
                from agents.local_model import LOCAL_MODEL_CHOICES, EmbeddedModelError, get_spec, part_paths

                name = LOCAL_MODEL_CHOICES[local_model]
                try:
                    part_paths(get_spec(name))
                except EmbeddedModelError as exc:
                    raise PreflightError(str(exc)) from None
                lines.append(f"model: embedded {name} (llama.cpp on 127.0.0.1)")
            seen.add(key)
            continue
        key = (p.model, p.api_base)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_api_key(p.model, p.api_base, p.api_key_env)
        except MissingAPIKey as exc:
            raise PreflightError(str(exc)) from None
        if p.api_base:
            check_endpoint(p.api_base, p.model)
        lines.append(f"model: {p.model}" + (f" at {p.api_base}" if p.api_base else ""))
    return lines


def check_disk(path: Path, min_free_mb: int = MIN_FREE_MB) -> str:
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free // 2**20
    if free_mb < min_free_mb:
        raise PreflightError(f"only {free_mb} MB free under {probe.resolve()}; a run needs {min_free_mb} MB: "
                             "free some space or choose another --run-dir")
    return f"disk: {free_mb / 1024:.1f} GB free under {probe.resolve()}"


def check_all(data_dir: Path, devices: tuple[str, ...], unconfined: bool, personas_config: dict,
              run_dir: Path, executor_slots: bool = True, local_model: str = "small") -> Preflight:
    """Every prerequisite of a real run, cheapest first. `executor_slots=False` (a Ray
    cluster at an address) skips the local device slots."""
    slots = check_slots(devices) if executor_slots else []
    data = check_data(data_dir)
    lines = [f"data: {data}"]
    if slots:
        lines.append("devices: " + ", ".join(f"{s.name} [{s.device_name}]" for s in slots))
    lines.append(check_disk(run_dir.parent if not run_dir.exists() else run_dir))
    lines.append(check_sandbox(unconfined))
    lines += check_models(personas_config, local_model)
    return Preflight(data, slots, lines)
