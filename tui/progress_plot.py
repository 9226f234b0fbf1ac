"""The progress picture: best val_bpb so far (a line) over the runs finished, every
measured candidate a dot (kept `+`, discarded `.`, undecided `o`, the root `R`).

Flow: the app hands it each snapshot; `progress_points` and `progress_text` are pure
functions of the snapshot and the plot size, so they are tested without a terminal.
It is the TUI's small copy of `evolve report`'s progress.png.

What it does not do: compute scores (the snapshot's per-candidate summaries are used).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import Static

from tui.snapshot import Snapshot

MARKS = {"discarded": ".", "pending": "o", "kept": "+", "root": "R"}
KEPT = ("confirmed",)
DISCARDED = ("rejected",)


@dataclass(frozen=True)
class ProgressPoint:
    candidate_id: str
    run_index: int  # runs finished when the candidate's first own run finished
    val_bpb: float  # the candidate's mean over its own runs
    kind: str  # a key of MARKS


def progress_points(snapshot: Snapshot) -> list[ProgressPoint]:
    finished = sorted((e.finished_at, e.candidate_id, e.purpose, e.status == "evaluated")
                      for evals in snapshot.evaluations.values() for e in evals
                      if e.finished_at is not None and e.status not in ("cancelled", "interrupted", "running"))
    first: dict[str, int] = {}
    for i, (_, cid, purpose, ok) in enumerate(finished, 1):
        if ok and purpose != "pair" and cid not in first:
            first[cid] = i
    out = []
    for c in snapshot.candidates:
        if c.id not in first or c.summary is None:
            continue
        kind = ("root" if c.id == "root" else "kept" if c.status in KEPT
                else "discarded" if c.status in DISCARDED else "pending")
        out.append(ProgressPoint(c.id, first[c.id], c.summary.val_mean, kind))
    return sorted(out, key=lambda p: p.run_index)


def best_line(points: list[ProgressPoint]) -> list[tuple[int, float]]:
    """(run index, best kept val_bpb so far) at each kept point (the root counts as kept)."""
    out: list[tuple[int, float]] = []
    for p in points:
        if p.kind in ("root", "kept") and (not out or p.val_bpb < out[-1][1]):
            out.append((p.run_index, p.val_bpb))
    return out


def progress_text(points: list[ProgressPoint], width: int = 48, height: int = 8) -> str:
    if not points:
        return "no run has finished yet"
    width, height = max(width, 8), max(height, 3)
    vals = [p.val_bpb for p in points]
    v_lo, v_hi = min(vals), max(vals)
    v_span = (v_hi - v_lo) or 1.0
    n = max(p.run_index for p in points)

    def col(i: int) -> int:
        return round((i - 1) / max(n - 1, 1) * (width - 1))

    def row(v: float) -> int:
        return height - 1 - round((v - v_lo) / v_span * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    steps = best_line(points)
    for k, (i, v) in enumerate(steps):  # the best-so-far line, held until the next improvement
        end = col(steps[k + 1][0]) if k + 1 < len(steps) else width
        for c in range(col(i), end):
            grid[row(v)][c] = "_"
    for kind, mark in MARKS.items():  # later kinds win a shared cell
        for p in points:
            if p.kind == kind:
                grid[row(p.val_bpb)][col(p.run_index)] = mark
    label_w = 8
    lines = []
    for r, cells in enumerate(grid):
        label = f"{v_hi:.4f}" if r == 0 else f"{v_lo:.4f}" if r == height - 1 else ""
        lines.append(f"{label:>{label_w}} |" + "".join(cells))
    lines.append(" " * label_w + " +" + "-" * width)
    hi = f"{n} runs"
    lines.append(" " * (label_w + 2) + "1" + " " * max(1, width - 1 - len(hi)) + hi)
    return "\n".join(lines)


class ProgressPlot(Static):
    """Best val_bpb over the run, redrawn on each snapshot."""

    DEFAULT_CSS = """
    ProgressPlot {
        height: auto;
        padding: 0 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._points: list[ProgressPoint] = []

    def on_mount(self) -> None:
        self.border_title = "best val_bpb over runs"
        self.border_subtitle = "_ best kept  + kept  . discarded  o undecided  R root"

    def show(self, snapshot: Snapshot) -> None:
        self._points = progress_points(snapshot)
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = max(20, self.size.width - 14) if self.size.width else 48
        self.update(progress_text(self._points, width=width, height=6))
