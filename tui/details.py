"""The details of one candidate (enter on a row): hypothesis, the loop's message, every
run per seed, and its diff against its parent from git.

Flow: the app pushes `CandidateDetails(run_dir, row, evaluations)`; the diff is read in
a thread worker (`tui.git_diff`) so a slow git never blocks the screen. Escape or q
closes it.

What it does not do: read the store (the app hands it the snapshot's rows), or show
test_bpb itself: this screen is where a human selects, so the sealed split appears only
as the val-test gap (test_bpb - val_bpb), the overfitting signal, with a warning on the
lineage when the gap grows along it (population.report.gap_trend).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

from population.display import clean, one_line
from population.report import gap_trend
from population.store import Evaluation
from tui.git_diff import diff_to_parent
from tui.header import STATUS_STYLES
from tui.population_table import score_cell
from tui.snapshot import CandidateRow, Snapshot


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def lineage_tree(snapshot: Snapshot, cid: str) -> Tree:
    """The candidate's ancestry from the root (first parents, crossover parents named),
    the candidate itself, and its children, each with status and mean val_bpb."""
    rows = {c.id: c for c in snapshot.candidates}
    gap_of = {c.id: c.summary.gap for c in snapshot.candidates if c.summary is not None}

    def label(c: CandidateRow, me: bool = False) -> Text:
        t = Text(c.id, style="bold reverse" if me else "bold")
        t.append(f"  {c.status}", style=STATUS_STYLES.get(c.status, ""))
        if c.summary is not None:
            t.append(f"  val_bpb {c.summary.val_mean:.4f} ({c.summary.n_seeds} seeds)")
        if c.summary is not None and c.summary.gap is not None:
            t.append(f"  gap {c.summary.gap:+.4f}")
        if c.second_parent_id:
            t.append(f"  crossover with {c.second_parent_id}", style="italic")
        if c.hypothesis and not me:
            t.append("  " + one_line(c.hypothesis)[:70], style="dim")
        return t

    chain: list[CandidateRow] = []
    cur = rows.get(cid)
    while cur is not None:
        chain.append(cur)
        cur = rows.get(cur.parent_id) if cur.parent_id else None
    chain.reverse()
    warning = gap_trend([c.id for c in chain], gap_of, snapshot.status.noise.val_std if snapshot.status.noise else None)
    tree = Tree(Text("lineage" + (f"  warning: {warning}" if warning else ""),
                     style="bold red" if warning else "bold"))
    node = tree
    for c in chain:
        node = node.add(label(c, me=c.id == cid))
    for child in sorted((c for c in snapshot.candidates if cid in (c.parent_id, c.second_parent_id)),
                        key=lambda c: (c.generation, c.idx)):
        node.add(label(child))
    return tree


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
    if row.summary is not None and row.summary.gap is not None:
        t.append(f"  val-test gap {row.summary.gap:+.4f}")
    t.append("\n\nhypothesis\n", style="bold")
    t.append(clean(row.hypothesis or "(none)") + "\n")
    t.append("\nmessage\n", style="bold")
    t.append(clean(row.message or "(none)") + "\n")
    t.append("\nruns\n", style="bold")
    if not evals:
        t.append("(none yet)\n")
    for e in sorted(evals, key=lambda e: e.id):
        when = time.strftime("%H:%M:%S", time.localtime(e.started_at)) if e.started_at else ""
        t.append(f"  {when} seed {e.seed:<6} {e.purpose.value:<8} {e.status:<14} val_bpb {_f(e.val_bpb, '.4f'):<8} "
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

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "close"), Binding("q", "dismiss", "close"),
        Binding("space,pagedown", "page(1)", "page down"), Binding("b,pageup", "page(-1)", "page up"),
        Binding("g,home", "edge(0)", "top", show=False), Binding("G,end", "edge(1)", "bottom", show=False),
    ]

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

    def __init__(self, run_dir: Path, row: CandidateRow, evals: tuple[Evaluation, ...],
                 snapshot: Snapshot | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.row = row
        self.evals = evals
        self.snapshot = snapshot
        self.diff_text: str | None = None  # set once git answered

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(describe(self.row, self.evals), id="summary")
            if self.snapshot is not None:
                yield Static(lineage_tree(self.snapshot, self.row.id), id="lineage")
            yield Static(Text("diff against the parent: reading git...", style="dim"), id="diff")

    def on_mount(self) -> None:
        scroll = self.query_one(VerticalScroll)
        scroll.border_title = f"candidate {self.row.id} (escape to close)"
        scroll.border_subtitle = "space/b page  g/G top/bottom"
        self.load_diff()

    def action_page(self, direction: int) -> None:
        scroll = self.query_one(VerticalScroll)
        if direction > 0:
            scroll.scroll_page_down(animate=False)
        else:
            scroll.scroll_page_up(animate=False)

    def action_edge(self, end: int) -> None:
        scroll = self.query_one(VerticalScroll)
        if end:
            scroll.scroll_end(animate=False)
        else:
            scroll.scroll_home(animate=False)

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
