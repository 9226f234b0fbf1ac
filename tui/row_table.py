"""A DataTable keyed by candidate id that keeps its selection across refreshes.

The population and archive tables both redraw from each snapshot; this base holds what
they share: the columns, the selected candidate, and a rebuild that skips unchanged
content and leaves the cursor on the same candidate.
"""

from __future__ import annotations

from typing import ClassVar

from textual.widgets import DataTable


class RowTable(DataTable):
    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = ()
    TITLE: ClassVar[str] = ""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self._shown: tuple = ()

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)
        self.border_title = self.TITLE

    @property
    def selected_id(self) -> str | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)

    def replace_rows(self, keys: list[str], cells: tuple, fingerprint: tuple) -> None:
        """Show `cells` (one tuple per key) unless `fingerprint` equals what is shown."""
        if fingerprint == self._shown:
            return
        self._shown = fingerprint
        keep = self.selected_id
        # rebuilding moves the cursor, but the selection stays: no RowHighlighted for it
        with self.prevent(DataTable.RowHighlighted):
            self.clear()
            for key, c in zip(keys, cells):
                self.add_row(*c, key=key)
            if keep is not None and keep in keys:
                self.move_cursor(row=self.get_row_index(keep), scroll=False)
