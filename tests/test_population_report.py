"""`evolve report` on a finished simulated run: results.tsv, both PNGs (opened and
looked at), the markdown that links them, `export --format report`; and the progress
line the main job shows while it runs."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from series_helpers import evolve

from arena.records import RunResult, Status
from population.narrate import Narrator, progress_line
from population.report import COLOURS
from population.store import Candidate, Store, store_path


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    r = evolve("--simulate", "--generations", "2", "--population", "3", "--sim-run-seconds", "0",
               "--run-dir", str(run), "-q")
    assert r.returncode == 0, r.stderr
    rep = evolve("report", "--run-dir", str(run))
    assert rep.returncode == 0, rep.stderr
    assert "Best: " in rep.stdout and str(run / "report" / "report.md") in rep.stdout
    return run


def test_results_tsv_has_autoresearchs_columns_and_one_row_per_run(reported):
    with open(reported / "report" / "results.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    with Store.open(store_path(reported), readonly=True) as store:
        runs = [e for e in store.evaluations() if e.status != "cancelled"]
        kept = {c.id for c in store.candidates() if c.status == Status.CONFIRMED}
    assert len(rows) - 1 == len(runs)
    assert {r[3] for r in rows[1:]} <= {"keep", "discard", "crash", "pending"}
    assert all(len(r[0]) == 7 and 0 < float(r[1]) < 8 for r in rows[1:])
    assert {r[4].split()[0] for r in rows[1:] if r[3] == "keep"} == kept


def test_both_pngs_show_the_run(reported):
    progress = Image.open(reported / "report" / "progress.png").convert("RGB")
    pareto = Image.open(reported / "report" / "pareto.png").convert("RGB")
    assert progress.size == (1200, 450) and pareto.size == (700, 500)
    prog, par = np.asarray(progress), np.asarray(pareto)

    def count(img: np.ndarray, colour: tuple[int, int, int]) -> int:
        return int((img == np.array(colour, dtype=img.dtype)).all(axis=-1).sum())

    # dots of kept and discarded candidates, the best-so-far line (black), the root's star
    assert count(prog, rgb(COLOURS["keep"])) > 20 and count(prog, rgb(COLOURS["discard"])) > 20
    assert count(prog, (0, 0, 0)) > 500
    assert count(par, (255, 127, 14)) > 20 and count(par, rgb(COLOURS["keep"])) > 20


def test_markdown_links_the_files_and_tells_the_story(reported):
    md = (reported / "report" / "report.md").read_text()
    for piece in ("![progress](progress.png)", "![pareto](pareto.png)", "[results.tsv](results.tsv)",
                  "The unmodified train.py scored val_bpb", "## Archive", "val-test gap", "## Lineage of",
                  "## Personas"):
        assert piece in md, piece


def test_export_format_report_writes_the_report_where_asked(reported, tmp_path):
    r = evolve("export", "--best", "--format", "report", "--out", str(tmp_path / "rep"), "--run-dir", str(reported))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "pareto.png", "progress.png", "report.md", "results.tsv"]


def test_progress_line_names_the_runs_in_flight_and_an_estimate(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(Candidate(id="root", generation=0, idx=0, parent_id=None, persona="root",
                                  status=Status.RUNNING, archive_version=-1))
        e = s.start_evaluation("root", 0, 0, "root")
        s.finish_evaluation(e, RunResult("root", "abc", 0, Status.EVALUATED, val_bpb=2.0, peak_mem_mb=100.0))
        s.start_evaluation("root", 1, 0, "root")
    with Store.open(store_path(tmp_path), readonly=True) as store:
        line = progress_line(store, budget_s=30, slots=1, population=2, initial_seeds=1, root_seeds=3,
                             generations=2, now=time.time() + 10)
    assert line.startswith("generation 0 (the root, 3 seeds)")
    assert "root seed 1: training 10 s of 30 s" in line and "left in this generation" in line


def test_narrator_keeps_its_status_line_below_the_narrative():
    import io

    out = io.StringIO()
    n = Narrator(stream=out, tty=True)
    n._show("generation 1 of 2 | g001c00 seed 0: training 3 s of 30 s")
    n.say("g001c00 (tuner) from root: \x1b]0;title\x07LR up")
    n.close()
    text = out.getvalue()
    assert "\x1b]0;" not in text and "g001c00 (tuner) from root: LR up\n" in text
    assert text.count("training 3 s of 30 s") == 2  # redrawn under the new line


def test_a_growing_val_test_gap_is_flagged_in_status_and_report(reported, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(reported, copy)
    with Store.open(store_path(copy)) as store:
        best = min(store.generations()[-1].archive, key=lambda r: r["val_bpb"])["candidate_id"]
        # the best candidate does much worse on the sealed test split than on val: it fits val
        store.db.execute("UPDATE evaluations SET test_bpb = val_bpb + 0.2 WHERE candidate_id = ?", [best])
        store.db.conn.commit()
    status = evolve("status", "--run-dir", str(copy))
    assert status.returncode == 0 and "warning: the val-test gap grows along this lineage" in status.stdout
    report = evolve("report", "--run-dir", str(copy))
    assert report.returncode == 0 and "Warning: the val-test gap grows" in report.stdout
    assert "**Warning:** the val-test gap grows" in (copy / "report" / "report.md").read_text()
