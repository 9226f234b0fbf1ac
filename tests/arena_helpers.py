"""Helpers for the arena's tests: a small data cache, a run repository, process scans.

Everything is real: a prepare.py cache built from a few KB of text, a git repository
whose root holds the tiny fixture train.py (tests/arena_tiny_train.py), the real
prepare.py and a program.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import psutil

import prepare
from arena.repo import ExperimentRepo
from arena.sandbox import bwrap_path

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = (Path(__file__).resolve().parent / "arena_tiny_train.py").read_text()
PREPARE = (ROOT / "prepare.py").read_text()
PROGRAM = "# program\nMinimise val_bpb.\n"
SAMPLE = "In the beginning was the word, and the word was with the harness.\n"

# EVOLVE_TEST_NO_BWRAP=1 runs the arena's tests as on a machine without bubblewrap.
HAS_BWRAP = bwrap_path() is not None and not os.environ.get("EVOLVE_TEST_NO_BWRAP")
USE_BWRAP = None if HAS_BWRAP else False


def build_cache(folder: Path) -> Path:
    """A byte-level cache from ~10 KB of text (12 documents)."""
    docs = [f"Document {i}: {'abcdefghij'[i % 10] * 5}\n" + SAMPLE * 12 for i in range(12)]
    prepare.build_cache(folder, docs, "text", "byte")
    return folder


def make_repo(run_dir: Path, train_py: str = TINY_TRAIN) -> ExperimentRepo:
    return ExperimentRepo.create(run_dir, train_py, PREPARE, PROGRAM)


def tree_digest(*paths: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `paths` (skipping path parts named in `skip`)."""
    out: dict[str, str] = {}
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if any(part in skip for part in f.parts):
                continue
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def survivors(run_dir: Path, marker: str | None = None) -> list[str]:
    """Processes still alive that belong to runs of `run_dir`: their environment names
    an EVOLVE_OUT under it, their cwd is under it, or their command line holds `marker`."""
    found = []
    run = str(run_dir.resolve())
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == me:
            continue
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if marker and marker in cmd:
                found.append(f"{p.pid}: {cmd}")
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.cwd().startswith(run + "/worktrees") or p.environ().get(
                "EVOLVE_OUT", ""
            ).startswith(run):
                found.append(f"{p.pid}: {cmd}")
        except (psutil.Error, OSError):
            continue
    return found
