"""The TUI's read side without a terminal: what a snapshot says about stored rows."""

from __future__ import annotations

import shutil
import statistics

import pytest
from conftest import evaluated_run

from arena.records import RunResult, Status
from population.store import Candidate, Store, store_path
from tui.snapshot import candidate_log, read_snapshot


def test_scores_count_successful_runs_on_the_primary_device_only(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(Candidate(id="c1", generation=1, idx=0, parent_id=None, persona="tuner",
                                  status=Status.PROPOSED, archive_version=0))
        s.set_meta("device_type", "cpu")
        for seed, purpose, val, device in [(0, "initial", 1.00, "cpu"), (1, "initial", 1.02, "cpu"),
                                           (2, "race", 1.04, "cpu"), (3, "pair", 1.06, "cpu"),
                                           (4, "rescore", 0.50, "cuda")]:
            e = s.start_evaluation("c1", seed, 1, purpose)
            s.finish_evaluation(e, evaluated_run("c1", seed, val, 100.0 + seed, device=device))
        e = s.start_evaluation("c1", 6, 1, "race")
        s.finish_evaluation(e, RunResult("c1", "abc", 6, Status.CRASHED, message="boom", device_type="cpu"))
        s.start_evaluation("c1", 5, 1, "race")  # in flight
    snap = read_snapshot(tmp_path)
    (row,) = snap.candidates
    # every successful run of the code on the primary device counts (a control run made
    # for a child measures the same code); another device's run and a crash do not
    counted = [1.00, 1.02, 1.04, 1.06]
    assert row.summary.n_seeds == 4
    assert row.summary.val_mean == pytest.approx(statistics.fmean(counted), abs=1e-12)
    assert row.summary.val_bpb_std == pytest.approx(statistics.stdev(counted), abs=1e-12)
    assert row.summary.mem_mean == pytest.approx(101.5, abs=1e-12)
    assert row.running_seeds == (5,)
    assert snap.status.evaluations_running == 1 and snap.status.evaluations_finished == 6


def test_provisional_noise_floor_from_the_roots_runs_before_the_loop_stores_one(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(Candidate(id="root", generation=0, idx=0, parent_id=None, persona="root",
                                  status=Status.PROPOSED, archive_version=-1))
        for seed, val in enumerate([1.0, 1.1]):
            e = s.start_evaluation("root", seed, 0, "root")
            s.finish_evaluation(e, evaluated_run("root", seed, val, 200.0))
    status = read_snapshot(tmp_path).status
    assert status.noise_provisional
    assert status.noise.n_seeds == 2
    assert status.noise.val_std == pytest.approx(statistics.stdev([1.0, 1.1]), abs=1e-12)
    assert status.archive_version == -1 and status.in_progress == 0


def test_candidate_log_follows_a_moved_run_directory(tmp_path):
    old = tmp_path / "old"
    (old / "logs").mkdir(parents=True)
    log = old / "logs" / "c1-s0-abcdef.log"
    log.write_text("hello\n")
    with Store.open(store_path(old)) as s:
        s.add_candidate(Candidate(id="c1", generation=1, idx=0, parent_id=None, persona="tuner",
                                  status=Status.PROPOSED, archive_version=0))
        e = s.start_evaluation("c1", 0, 1, "initial")
        s.finish_evaluation(e, evaluated_run("c1", 0, 1.0, 100.0, log_path=str(log)))
    assert candidate_log(old, read_snapshot(old).evaluations["c1"]) == log
    new = tmp_path / "new"
    shutil.move(old, new)
    assert candidate_log(new, read_snapshot(new).evaluations["c1"]) == new / "logs" / "c1-s0-abcdef.log"
    assert candidate_log(new, ()) is None
