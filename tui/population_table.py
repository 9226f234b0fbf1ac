"""The population table: one row per candidate, refreshed from each snapshot.

Flow: the app hands it `Snapshot.candidates`; it redraws only when a row changed and
keeps the cursor on the same candidate. The app listens to its `RowHighlighted` (follow
that candidate's log) and `RowSelected` (enter: open the details).

What it does not do: read the store.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from population.display import one_line
from tui.header import STATUS_STYLES
from tui.row_table import RowTable
from tui.snapshot import CandidateRow

COLUMNS = (("id", "id"), ("gen", "gen"), ("persona", "persona"), ("status", "status"),
           ("val_bpb", "val_bpb mean ± sd (seeds)"), ("mem", "peak MB"), ("hypothesis", "hypothesis"))


ORDERS = ("oldest first", "newest first", "best val_bpb first")


def sort_rows(rows: tuple[CandidateRow, ...], order: str) -> tuple[CandidateRow, ...]:
    if order == "newest first":
        return tuple(sorted(rows, key=lambda r: (-r.generation, -r.idx, r.id)))
    if order == "best val_bpb first":  # unmeasured candidates last, oldest first among them
        return tuple(sorted(rows, key=lambda r: (r.summary is None, r.summary.val_mean if r.summary else 0.0,
                                                 r.generation, r.idx)))
    return rows


def score_cell(row: CandidateRow) -> str:
    s = row.summary
    if s is None:
        return "-"
    spread = "     -" if s.val_bpb_std is None else f"{s.val_bpb_std:.4f}"
    return f"{s.val_mean:.4f} ± {spread} ({s.n_seeds})"


def row_cells(row: CandidateRow) -> tuple:
    status = row.status
    if row.running_seeds:
        status += " s" + ",".join(str(s) for s in row.running_seeds)
    mem = "-" if row.summary is None else f"{row.summary.mem_mean:.0f}"
    return (row.id, str(row.generation), row.persona, Text(status, style=STATUS_STYLES.get(row.status, "")),
            score_cell(row), mem, one_line(row.hypothesis)[:80])


class PopulationTable(RowTable):
    """Every candidate, oldest first."""

    COLUMNS = COLUMNS
    TITLE = "population"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "details"),
        Binding("s", "cycle_order", "sort"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(zebra_stripes=True, **kwargs)
        self._rows: tuple[CandidateRow, ...] = ()
        self.order = ORDERS[0]

    def action_cycle_order(self) -> None:
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        self.show(self._rows)

    def show(self, rows: tuple[CandidateRow, ...]) -> None:
        self._rows = rows
        rows = sort_rows(rows, self.order)
        cells = tuple(row_cells(r) for r in rows)
        self.border_subtitle = f"{len(rows)} candidates, {self.order} (s: sort)"
        self.replace_rows([r.id for r in rows], cells, tuple(tuple(str(c) for c in row) for row in cells))
