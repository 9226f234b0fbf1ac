"""An ASCII scatter of val_bpb (up) against peak memory (across) for every measured
candidate, with the archive's members marked.

Flow: the app hands it each snapshot and the selected candidate; `scatter_text` is a
pure function of the points and the plot size, so it is tested without a terminal.

What it does not do: compute the front (the loop stored it; the snapshot carries it).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import Static

from tui.snapshot import Snapshot

# later marks win when two points share a cell
MARKS = {"other": ".", "member": "*", "root": "R", "selected": "@"}
ORDER = ("other", "member", "root", "selected")


@dataclass(frozen=True)
class PlotPoint:
    candidate_id: str
    val_bpb: float
    peak_mem_mb: float
    kind: str  # a key of MARKS


def plot_points(snapshot: Snapshot, selected: str | None) -> list[PlotPoint]:
    members = {r.candidate_id: r for r in snapshot.archive}
    out = []
    for c in snapshot.candidates:
        if c.id in members:  # the archive's own means (those the loop decided on)
            val, mem = members[c.id].val_bpb, members[c.id].peak_mem_mb
        elif c.summary is not None:
            val, mem = c.summary.val_mean, c.summary.mem_mean
        else:
            continue
        kind = ("selected" if c.id == selected else "root" if c.id == "root"
                else "member" if c.id in members else "other")
        out.append(PlotPoint(c.id, val, mem, kind))
    return out


def scatter_text(points: list[PlotPoint], width: int = 48, height: int = 12) -> str:
    """A `height` x `width` character grid with labelled axes (val_bpb lower is better,
    peak memory lower is better: the front runs along the bottom-left)."""
    if not points:
        return "no measured candidate yet"
    width, height = max(width, 8), max(height, 3)
    vals = [p.val_bpb for p in points]
    mems = [p.peak_mem_mb for p in points]
    v_lo, v_hi = min(vals), max(vals)
    m_lo, m_hi = min(mems), max(mems)
    v_span = (v_hi - v_lo) or 1.0
    m_span = (m_hi - m_lo) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for kind in ORDER:
        for p in points:
            if p.kind != kind:
                continue
            col = round((p.peak_mem_mb - m_lo) / m_span * (width - 1))
            row = height - 1 - round((p.val_bpb - v_lo) / v_span * (height - 1))
            grid[row][col] = MARKS[kind]
    label_w = 8
    lines = []
    for i, cells in enumerate(grid):
        if i == 0:
            label = f"{v_hi:.4f}"
        elif i == height - 1:
            label = f"{v_lo:.4f}"
        else:
            label = ""
        lines.append(f"{label:>{label_w}} |" + "".join(cells))
    lines.append(" " * label_w + " +" + "-" * width)
    lo, hi = f"{m_lo:.0f}", f"{m_hi:.0f} MB"
    lines.append(" " * (label_w + 2) + lo + " " * max(1, width - len(lo) - len(hi)) + hi)
    return "\n".join(lines)


class ParetoPlot(Static):
    """val_bpb against peak memory, redrawn on each snapshot and selection change."""

    DEFAULT_CSS = """
    ParetoPlot {
        height: auto;
        padding: 0 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._points: list[PlotPoint] = []

    def on_mount(self) -> None:
        self.border_title = "val_bpb vs peak memory"
        self.border_subtitle = "* archive  R root  @ selected  . other"

    def show(self, snapshot: Snapshot, selected: str | None) -> None:
        self._points = plot_points(snapshot, selected)
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        # the grid takes the width left after the axis labels, border and padding
        width = max(20, self.size.width - 14) if self.size.width else 48
        self.update(scatter_text(self._points, width=width, height=10))
