"""The recent events feed: what the loop announced (proposals, runs, confirmations,
generations), newest first.

Flow: the app hands it `Snapshot.events`; it redraws when a new event arrived.

What it does not do: read the store.
"""

from __future__ import annotations

import time

from textual.widgets import DataTable

from population.display import one_line
from tui.snapshot import EventRow


class EventsFeed(DataTable):
    """The newest events of the run (scrolls with the mouse; tab skips it)."""

    can_focus = False

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="none", zebra_stripes=True, **kwargs)
        self._newest: int | None = None

    def on_mount(self) -> None:
        self.add_column("time", key="time")
        self.add_column("gen", key="gen")
        self.add_column("kind", key="kind")
        self.add_column("message", key="message")
        self.border_title = "events"

    def show(self, events: tuple[EventRow, ...]) -> None:
        newest = events[0].id if events else None
        if newest == self._newest:
            return
        self._newest = newest
        self.clear()
        for e in events:
            self.add_row(time.strftime("%H:%M:%S", time.localtime(e.created_at)),
                         "" if e.generation is None else str(e.generation), e.kind,
                         one_line(e.message)[:160], key=str(e.id))
