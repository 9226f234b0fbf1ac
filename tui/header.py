"""The run-status header: session, generation, candidates by status, cost, elapsed time.

Flow: the app hands it each new `Snapshot.status`; it renders two lines of text.

What it does not do: read the store or compute anything beyond formatting.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from population.display import one_line
from tui.snapshot import RunStatus, format_duration

STATUS_STYLES = {
    "proposed": "dim", "running": "bold yellow", "evaluated": "cyan", "confirmed": "bold green",
    "rejected": "magenta", "invalid_edit": "red", "guard_refused": "red", "crashed": "red",
    "timeout": "red", "oom": "red", "nan": "red", "contract_error": "red",
    "causality_violation": "bold red",
}


def status_line(status: RunStatus) -> Text:
    text = Text()
    text.append(f"{status.run_dir}", style="bold")
    text.append(f"  {one_line(status.session)[:120]}", style="green" if status.live else "yellow")
    of = f" of {status.generations_planned}" if status.generations_planned else ""
    if status.in_progress is not None and not status.live:
        # nobody is running it: say where it stopped, not "in progress"
        text.append(f"  generation {status.in_progress}{of} unfinished", style="yellow")
    elif status.in_progress is not None:
        text.append(f"  generation {status.in_progress}{of} in progress")
        if status.generation > status.in_progress:
            text.append(f" (proposing ahead for {status.generation})")
    else:
        text.append(f"  generation {max(status.archive_version, 0)}{of} done")
    archive = "-" if status.archive_version < 0 else str(status.archive_version)
    text.append(f"  (archive v{archive}")
    if status.hypervolume is not None:
        text.append(f", hv {status.hypervolume:.4g}")
    text.append(")")
    text.append(f"  cost ${status.cost_usd:.4f}")
    if status.max_cost_usd is not None:
        text.append(f" of ${status.max_cost_usd:.2f}")
    text.append(f"  elapsed {format_duration(status.elapsed_s)}")
    text.append("\n")
    text.append(f"candidates {status.n_candidates}:")
    for name, n in sorted(status.counts.items()):
        text.append(f" {name} {n}", style=STATUS_STYLES.get(name, ""))
    text.append(f"  runs {status.evaluations_finished} done, {status.evaluations_running} running")
    if status.device_type:
        text.append(f" on {status.device_type}")
    if status.noise is not None:
        label = "noise floor (provisional)" if status.noise_provisional else "noise floor"
        text.append(f"  {label}: val_bpb sd {status.noise.val_std:.5f} over {status.noise.n_seeds} seeds")
    return text


class RunHeader(Static):
    """Two lines at the top: where the run stands."""

    DEFAULT_CSS = """
    RunHeader {
        height: 2;
        padding: 0 1;
        background: $boost;
    }
    RunHeader.error {
        color: $error;
    }
    """

    def show(self, status: RunStatus) -> None:
        self.remove_class("error")
        self.update(status_line(status))

    def show_error(self, message: str) -> None:
        self.add_class("error")
        self.update(Text(message))
