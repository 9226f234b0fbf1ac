"""`evolve tui`: a live, read-only view of a running population.

Flow: the evolve process writes the run's store; this app opens it read-only every
`interval` seconds in a thread worker (`tui.snapshot.read_snapshot`) and hands the
snapshot to small widgets: the run header, the population table, the Pareto archive
(table and scatter), the progress picture (best val_bpb over the runs), the selected
candidate's log tail and the events feed. Enter opens a candidate's details: its
lineage as a tree (ancestors, crossover parents, children) and its diff against its
parent (from git), paged with space and b.

Keys: q quit, r refresh now, enter details (escape closes them), s sort the population,
tab between the population and the archive (the focused table picks the candidate whose
log is tailed and which the scatter marks).

What it does not do: write. The store is opened with SQLite's read-only mode, git is
only read, log files are only read. A missing or unreadable store ends the app with a
one-line error (`EvolveApp.error`, printed by `run`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import ClassVar

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer
from textual.worker import Worker, WorkerState

from tui.archive_table import ArchiveTable
from tui.details import CandidateDetails
from tui.events_feed import EventsFeed
from tui.header import RunHeader
from tui.log_tail import LogTail
from tui.pareto_plot import ParetoPlot
from tui.population_table import PopulationTable
from tui.progress_plot import ProgressPlot
from tui.snapshot import Snapshot, TUIError, candidate_log, open_store, read_snapshot

log = logging.getLogger(__name__)

REFRESH_S = 2.0


class EvolveApp(App[int]):
    """Watches one run directory."""

    TITLE = "evolve"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("r", "refresh_now", "refresh"),
        Binding("enter", "details", "details"),
    ]
    CSS = """
    #main { height: 1fr; }
    #left { width: 3fr; }
    #right { width: 2fr; }
    PopulationTable, EventsFeed, ArchiveTable, ParetoPlot, ProgressPlot, LogTail {
        border: round $primary-darken-2;
    }
    PopulationTable:focus, ArchiveTable:focus { border: round $accent; }
    PopulationTable { height: 2fr; }
    EventsFeed { height: 1fr; }
    ArchiveTable { height: auto; max-height: 12; }
    LogTail { height: 1fr; }
    """

    class SnapshotRead(Message):
        """A refresh finished: a new snapshot, or why there is none."""

        def __init__(self, snapshot: Snapshot | None, error: str | None = None) -> None:
            super().__init__()
            self.snapshot = snapshot
            self.error = error

    def __init__(self, run_dir: str | os.PathLike, interval: float = REFRESH_S) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.interval = interval
        self.snapshot: Snapshot | None = None
        self.selected: str | None = None
        self.error: str | None = None
        self.refreshes = 0  # snapshots applied so far (tests wait on it)
        self._reader: Worker | None = None
        self._again = False  # a refresh was asked for while a read was in flight

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield PopulationTable(id="population")
                yield EventsFeed(id="events")
            with Vertical(id="right"):
                yield ArchiveTable(id="archive")
                yield ParetoPlot(id="plot")
                yield ProgressPlot(id="progress")
                yield LogTail(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.run_dir)
        try:
            snapshot = read_snapshot(self.run_dir)
        except TUIError as exc:
            self.error = str(exc)
            self.exit(return_code=1)
            return
        self.apply(snapshot)
        self.query_one(PopulationTable).focus()
        self.set_interval(self.interval, self.refresh_from_store)

    # -- reading ----------------------------------------------------------------------

    def action_refresh_now(self) -> None:
        self.refresh_from_store()

    def refresh_from_store(self) -> None:
        """Read a new snapshot in a thread. While a read is in flight another is not
        started (they would pile up on a slow disk); one more follows when it ends."""
        if self._reader is not None and not self._reader.is_finished:
            self._again = True
            return
        self._again = False
        self._reader = self._read_store()

    @work(thread=True, group="refresh", exit_on_error=False)
    def _read_store(self) -> None:
        # post_message is thread-safe and never waits: a read finishing while the app
        # shuts down is dropped instead of failing
        try:
            self.post_message(self.SnapshotRead(read_snapshot(self.run_dir)))
        except TUIError as exc:
            self.post_message(self.SnapshotRead(None, str(exc)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "refresh":
            return
        if event.state == WorkerState.ERROR and self.query(RunHeader):
            # a bug, not a bad store (those are TUIError): say so and keep watching
            log.error("reading the store failed", exc_info=event.worker.error)
            self.query_one(RunHeader).show_error(f"refresh failed: {event.worker.error!r}")
        if event.worker.is_finished and self._again:
            self.refresh_from_store()

    def on_evolve_app_snapshot_read(self, message: SnapshotRead) -> None:
        if not self.query(RunHeader):  # arrived while the app closes: its widgets are gone
            return
        if message.snapshot is not None:
            self.apply(message.snapshot)
        else:
            self.query_one(RunHeader).show_error(f"cannot refresh: {message.error}")

    def apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.query_one(RunHeader).show(snapshot.status)
        table = self.query_one(PopulationTable)
        table.show(snapshot.candidates)
        self.query_one(ArchiveTable).show(snapshot.archive, snapshot.status.archive_version)
        self.query_one(EventsFeed).show(snapshot.events)
        self.query_one(ProgressPlot).show(snapshot)
        if self.selected is None or snapshot.candidate(self.selected) is None:
            self.selected = table.selected_id
        self._follow_selected()
        self.refreshes += 1

    def _follow_selected(self) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        self.query_one(ParetoPlot).show(snapshot, self.selected)
        evals = snapshot.evaluations.get(self.selected or "", ())
        self.query_one(LogTail).follow(candidate_log(self.run_dir, evals), self.selected or "")

    # -- selection and details ----------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # only the focused table drives the selection (a table filling up moves its cursor too)
        table = event.data_table
        if table.id in ("population", "archive") and table.has_focus and event.row_key.value is not None:
            self._select(str(event.row_key.value))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, (PopulationTable, ArchiveTable)) and event.widget.selected_id is not None:
            self._select(event.widget.selected_id)

    def _select(self, cid: str) -> None:
        if cid != self.selected:
            self.selected = cid
            self._follow_selected()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id in ("population", "archive") and event.row_key.value is not None:
            self.show_details(str(event.row_key.value))

    def action_details(self) -> None:
        if self.selected is not None:
            self.show_details(self.selected)

    def show_details(self, cid: str) -> None:
        if self.snapshot is None:
            return
        row = self.snapshot.candidate(cid)
        if row is None:
            self.notify(f"no candidate {cid} in the store", severity="warning")
            return
        self.push_screen(CandidateDetails(self.run_dir, row, self.snapshot.evaluations.get(cid, ()), self.snapshot))


def run(run_dir: str | os.PathLike, interval: float = REFRESH_S) -> int:
    """Show the TUI for `run_dir` until q; returns the exit code (1 with a one-line
    error on stderr when the store cannot be read)."""
    try:
        open_store(run_dir).close()
    except TUIError as exc:
        print(f"evolve tui: {exc}", file=sys.stderr)
        return 1
    app = EvolveApp(run_dir, interval)
    app.run()
    if app.error:
        print(f"evolve tui: {app.error}", file=sys.stderr)
        return 1
    return int(app.return_code or 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m tui.app [RUN_DIR]`; without RUN_DIR the newest run under runs/."""
    parser = argparse.ArgumentParser(prog="evolve tui", description="the live terminal view of a run")
    parser.add_argument("run_dir", nargs="?", type=Path, help="run directory (default: the newest under runs/)")
    parser.add_argument("--interval", type=float, default=REFRESH_S, help="seconds between refreshes")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:
        from population.rundirs import NoRun, latest_run_dir

        try:
            run_dir = latest_run_dir()
        except NoRun as exc:
            print(f"evolve tui: {exc}", file=sys.stderr)
            return 1
    return run(run_dir, args.interval)


if __name__ == "__main__":
    sys.exit(main())
