"""Progress lines: what a candidate says about its own training while it runs.

train_template.py prints, every few percent of the budget, one line in a fixed shape
(autoresearch-like; docs/contracts.md):

    step 120 (25.0%) | loss: 2.3456 | tok/sec: 16000 | remaining: 45s

The arena reads them from a run's log, live (`Arena.progress`, for the evaluation
cascade) and once the run is over (`RunResult.claimed["progress"]`, for calibrating
it); population.telemetry shows them to the next proposer.

What it does not do: trust them. Every figure here is the candidate's claim; it may
stop a run early (population.cascade), never score or accept one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PROGRESS_RE = re.compile(
    r"^step (?P<step>\d+) \((?P<pct>[0-9.]+)%\) \| loss: (?P<loss>[-+0-9.eEnaif]+) \| "
    r"tok/sec: (?P<tps>[0-9.eE+]+) \| remaining: (?P<rem>[-0-9.]+)s\s*$",
    re.MULTILINE,
)
MAX_LOG_BYTES = 4 << 20  # a log larger than this is read from its tail


@dataclass(frozen=True)
class ProgressPoint:
    """One progress line: the candidate's claim at one point of its budget."""

    step: int
    fraction: float  # of the budget spent, 0..1
    loss: float
    tokens_per_s: float
    remaining_s: float


@dataclass(frozen=True)
class RunProgress:
    """A running run as the arena sees it so far: the candidate's progress lines (claims)
    and the peak memory measured from outside (None when the backend cannot see it)."""

    points: list[ProgressPoint]
    peak_mem_mb: float | None = None


def parse_progress(text: str) -> list[ProgressPoint]:
    """Every well-formed progress line of `text`, in order. Other lines are ignored."""
    out = []
    for m in PROGRESS_RE.finditer(text):
        try:
            loss = float(m["loss"])
        except ValueError:
            continue
        out.append(ProgressPoint(int(m["step"]), min(float(m["pct"]) / 100.0, 1.0), loss,
                                 float(m["tps"]), float(m["rem"])))
    return out


def loss_at(points: list[ProgressPoint], fraction: float) -> float | None:
    """The claimed loss at the last progress point at or before `fraction` (None if none)."""
    before = [p for p in points if p.fraction <= fraction + 1e-9]
    return before[-1].loss if before else None


def read_log(path: str | Path) -> str:
    """A log's text (its last `MAX_LOG_BYTES` when larger); "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG_BYTES))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def curve(points: list[ProgressPoint]) -> list[list[float]]:
    """The (fraction, loss) pairs of `points`, the form `RunResult.claimed["progress"]` keeps."""
    return [[p.fraction, p.loss] for p in points]


def from_curve(pairs: object) -> list[ProgressPoint]:
    """`curve`'s form read back (from a store row: anything malformed is dropped)."""
    out = []
    for item in pairs if isinstance(pairs, list) else []:
        if (isinstance(item, list) and len(item) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item)):
            out.append(ProgressPoint(0, float(item[0]), float(item[1]), 0.0, 0.0))
    return out


def live_memory_path(log_path: str | Path) -> Path:
    """Where the supervisor keeps a running training's peak memory so far (beside its log)."""
    return Path(log_path).with_suffix(".live.json")


def read_live_memory(log_path: str | Path) -> float | None:
    """The peak memory (MB) measured so far from outside a running training, or None."""
    try:
        value = json.loads(live_memory_path(log_path).read_text()).get("peak_mem_mb")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None
