"""The details of one candidate (enter on a row): hypothesis, the loop's message, every
run per seed, and its diff against its parent from git.

Flow: the app pushes `CandidateDetails(run_dir, row, evaluations)`; the diff is read in
a thread worker (`tui.git_diff`) so a slow git never blocks the screen. Escape or q
closes it.

What it does not do: read the store (the app hands it the snapshot's rows), or show
test_bpb: the test split stays sealed from selection, and this screen is where a human
selects.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

from population.display import clean, one_line
from population.store import Evaluation
from tui.git_diff import diff_to_parent
from tui.population_table import score_cell
from tui.snapshot import CandidateRow


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def describe(row: CandidateRow, evals: tuple[Evaluation, ...]) -> Text:
    t = Text()
    t.append(f"{row.id}", style="bold")
    t.append(f"  generation {row.generation}  persona {row.persona}")
    if row.model:
        t.append(f" ({one_line(row.model)})")
    t.append(f"  status {row.status}\n")
    parents = ", ".join(p for p in (row.parent_id, row.second_parent_id) if p) or "-"
    t.append(f"parent {parents}  commit {(row.commit or '-')[:12]}  LLM cost ${row.cost_usd:.4f}\n")
    t.append(f"val_bpb {score_cell(row)}")
    if row.summary is not None:
        t.append(f"  peak memory {row.summary.mem_mean:.0f} MB")
    t.append("\n\nhypothesis\n", style="bold")
    t.append(clean(row.hypothesis or "(none)") + "\n")
    t.append("\nmessage\n", style="bold")
    t.append(clean(row.message or "(none)") + "\n")
    t.append("\nruns\n", style="bold")
    if not evals:
        t.append("(none yet)\n")
    for e in sorted(evals, key=lambda e: e.id):
        when = time.strftime("%H:%M:%S", time.localtime(e.started_at)) if e.started_at else ""
        t.append(f"  {when} seed {e.seed:<6} {e.purpose:<8} {e.status:<14} val_bpb {_f(e.val_bpb, '.4f'):<8} "
                 f"mem {_f(e.peak_mem_mb, '.0f'):>6} MB  train {_f(e.training_seconds, '.0f')} s  "
                 f"{e.device_type} {e.device_name}\n")
        if e.status not in ("evaluated", "running") and e.message:
            t.append("      " + (clean(e.message).strip().splitlines() or [""])[-1][:160] + "\n", style="red")
    return t


class CandidateDetails(ModalScreen[None]):
    """One candidate, in full."""

    class DiffRead(Message):
        """git answered (or said why it could not)."""

        def __init__(self, diff: str) -> None:
            super().__init__()
            self.diff = diff

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "close"), Binding("q", "dismiss", "close")]

    DEFAULT_CSS = """
    CandidateDetails {
        align: center middle;
    }
    CandidateDetails > VerticalScroll {
        width: 90%;
        height: 90%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    """

    def __init__(self, run_dir: Path, row: CandidateRow, evals: tuple[Evaluation, ...]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.row = row
        self.evals = evals
        self.diff_text: str | None = None  # set once git answered

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(describe(self.row, self.evals), id="summary")
            yield Static(Text("diff against the parent: reading git...", style="dim"), id="diff")

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).border_title = f"candidate {self.row.id} (escape to close)"
        self.load_diff()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def load_diff(self) -> None:
        # a message, not call_from_thread: if the screen is closed first it is dropped
        self.post_message(self.DiffRead(diff_to_parent(self.run_dir, self.row.commit)))

    def on_candidate_details_diff_read(self, message: DiffRead) -> None:
        diff = clean(message.diff)
        self.diff_text = diff
        if not self.query("#diff"):  # the screen is closing
            return
        title = Text("\ndiff against the parent (train.py)\n", style="bold")
        body = Syntax(diff, "diff", theme="ansi_dark", word_wrap=True) if diff.startswith("diff") else Text(diff)
        self.query_one("#diff", Static).update(Group(title, body))
