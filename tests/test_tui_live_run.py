"""The TUI watching a real `evolve --simulate` process as it runs, driven with Pilot:
the header follows the generations and says so when the run has died, the progress
picture fills, the details show the lineage as a tree and page through the diff.
Also the pure parts: the progress picture and the val-test gap warning."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from population.report import gap_trend
from tui.app import EvolveApp
from tui.details import CandidateDetails
from tui.header import status_line
from tui.progress_plot import ProgressPlot, ProgressPoint, best_line, progress_text

ROOT = Path(__file__).resolve().parent.parent


async def _wait(pilot, cond, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_the_tui_follows_a_real_simulated_run_and_its_death(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "population.cli", "--simulate", "--generations", "30",
                             "--population", "3", "--sim-run-seconds", "0.3", "--run-dir", str(run), "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict = {}
    try:
        for _ in range(600):  # the run directory appears whole, with its store
            if (run / "evolve.db").exists():
                break
            time.sleep(0.1)
        app = EvolveApp(run, interval=0.3)

        async def go() -> None:
            async with app.run_test(size=(180, 60)) as pilot:
                await _wait(pilot, lambda: app.snapshot is not None and app.snapshot.status.archive_version >= 1,
                            "generation 1 to finish")
                seen["live_header"] = str(status_line(app.snapshot.status))
                seen["progress"] = str(app.query_one(ProgressPlot).content)
                child = next(c.id for c in app.snapshot.candidates if c.parent_id and c.commit)
                app.show_details(child)
                await _wait(pilot, lambda: isinstance(app.screen, CandidateDetails)
                            and app.screen.diff_text is not None, "the diff")
                console = Console(width=170, file=io.StringIO(), record=True)
                console.print(app.screen.query_one("#lineage").content)
                seen["lineage"] = console.export_text()
                scroll = app.screen.query_one("VerticalScroll")
                before = scroll.scroll_y
                await pilot.press("space")
                await pilot.pause(0.2)
                seen["paged"] = (before, scroll.scroll_y, scroll.max_scroll_y)
                await pilot.press("escape")
                proc.send_signal(signal.SIGKILL)  # the run dies mid-generation
                proc.wait(timeout=30)
                await _wait(pilot, lambda: not app.snapshot.status.live, "the header to notice the death")
                seen["dead_header"] = str(status_line(app.snapshot.status))

        asyncio.run(go())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "running (pid" in seen["live_header"]
    assert "R" in seen["progress"] and "_" in seen["progress"] and "runs" in seen["progress"]
    assert "root" in seen["lineage"] and "confirmed" in seen["lineage"]
    before, after, most = seen["paged"]
    assert most == 0 or after > before  # space pages down whenever there is more below
    assert "killed (continue with evolve --resume)" in seen["dead_header"]
    assert "in progress" not in seen["dead_header"]


def test_progress_picture_draws_the_best_kept_line_and_every_candidate():
    pts = [ProgressPoint("root", 3, 1.10, "root"), ProgressPoint("a", 4, 1.12, "discarded"),
           ProgressPoint("b", 6, 1.05, "kept"), ProgressPoint("c", 9, 1.08, "pending")]
    assert best_line(pts) == [(3, 1.10), (6, 1.05)]
    text = progress_text(pts, width=30, height=6)
    grid = [ln.split("|", 1)[1] for ln in text.splitlines()[:6]]
    assert sum(row.count(m) for row in grid for m in "R.+o") == 4
    assert grid[-1].rstrip().endswith("_")  # the best kept (1.05, the lowest row) is held to the right edge
    assert "9 runs" in text and progress_text([]) == "no run has finished yet"


def test_a_lineage_whose_val_test_gap_grows_is_flagged():
    steady = {"root": 0.010, "a": 0.011, "b": 0.012}
    assert gap_trend(["root", "a", "b"], steady, noise_sd=0.005) is None
    growing = {"root": 0.010, "a": 0.018, "b": 0.031}
    warning = gap_trend(["root", "a", "b"], growing, noise_sd=0.005)
    assert warning is not None and "root +0.0100 -> b +0.0310" in warning
