"""Where runs live: the default runs/ folder and the newest run in it. Used by the CLI
(`evolve --resume`, `status`, `report`, `export`) and the TUI, which therefore do not
import each other.
"""

from __future__ import annotations

from pathlib import Path

from arena.errors import EvolveError
from population.store import store_path

DEFAULT_RUNS = Path("runs")


class NoRun(EvolveError):
    """No run directory was given and none exists under runs/."""


def latest_run_dir(runs: Path = DEFAULT_RUNS) -> Path:
    """The run under `runs` whose store was written last."""
    found = sorted((p for p in runs.glob("*") if store_path(p).exists()), key=lambda p: store_path(p).stat().st_mtime)
    if not found:
        raise NoRun(f"no run under {runs}/; pass --run-dir DIR")
    return found[-1]
