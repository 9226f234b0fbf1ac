"""The Textual TUI: a live, read-only view of a run (`evolve tui`). See `tui.app`."""

from __future__ import annotations

import os


def run(run_dir: str | os.PathLike) -> int:
    """Show the TUI for `run_dir` (imports Textual only when called)."""
    from tui.app import run as _run

    return _run(run_dir)
