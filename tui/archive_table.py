"""The Pareto archive as a table: the last finished generation's members.

Flow: the app hands it `Snapshot.archive` (the archive version the loop stored, with
each member's hypervolume contribution and crowding distance from
`population.archive.ParetoArchive`). Enter on a row opens that member's details.

What it does not do: decide membership (the loop did) or read the store.
"""

from __future__ import annotations

import math

from population.display import one_line
from tui.row_table import RowTable
from tui.snapshot import ArchiveRow

COLUMNS = (("id", "id"), ("val_bpb", "val_bpb ± sd (seeds)"), ("mem", "peak MB"),
           ("hv", "hv contrib"), ("crowding", "crowding"), ("persona", "persona"),
           ("hypothesis", "hypothesis"))


def _num(x: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return format(x, fmt)


def archive_cells(row: ArchiveRow) -> tuple[str, ...]:
    return (row.candidate_id, f"{row.val_bpb:.4f} ± {row.val_bpb_std:.4f} ({row.n_seeds})",
            f"{row.peak_mem_mb:.0f}", _num(row.hv_contribution, ".4g"), _num(row.crowding, ".3g"),
            row.persona, one_line(row.hypothesis)[:60])


class ArchiveTable(RowTable):
    """The epsilon-non-dominated set, lowest val_bpb first."""

    COLUMNS = COLUMNS
    TITLE = "Pareto archive"

    def show(self, rows: tuple[ArchiveRow, ...], version: int) -> None:
        self.border_subtitle = "not formed yet" if version < 0 else f"version {version}, {len(rows)} members"
        cells = tuple(archive_cells(r) for r in rows)
        self.replace_rows([r.candidate_id for r in rows], cells, cells)
