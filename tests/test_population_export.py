"""`evolve export --format series` is an mbox that `git am` applies to the project's
train_template.py, reproducing the candidate's train.py byte for byte; without --out
nothing is written; hypotheses are whole."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from series_helpers import check_series_applies, evolve

from population.store import Store, store_path


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    r = evolve("--simulate", "--generations", "2", "--population", "3", "--sim-run-seconds", "0",
               "--run-dir", str(run), "-q")
    assert r.returncode == 0, r.stderr
    return run


def test_series_of_a_two_step_lineage_applies_with_git_am(sim_run, tmp_path):
    with Store.open(store_path(sim_run), readonly=True) as store:
        deep = [c for c in store.candidates() if c.commit and c.parent_id not in (None, "root")]
        long_hypothesis = deep[0].hypothesis
    assert deep, "the simulated run has no grandchild of the root"
    mbox = check_series_applies(sim_run, deep[0].id, tmp_path)
    assert mbox.count("\nSubject: [PATCH ") == 2
    assert f"{long_hypothesis}" in mbox and "..." not in mbox


def test_hypotheses_are_never_cut(sim_run, tmp_path):
    long = "Raise the learning rate " + "because the loss still falls steeply at the end of the budget " * 6
    copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(sim_run), str(copy)], check=True)
    with Store.open(store_path(copy)) as store:
        best = min(store.generations()[-1].archive, key=lambda r: r["val_bpb"])["candidate_id"]
        store.db["candidates"].update(best, {"hypothesis": long})
    patch = evolve("export", "--best", "--format", "patch", "--run-dir", str(copy))
    assert patch.returncode == 0, patch.stderr
    assert " ".join(long.split()) in " ".join(patch.stdout.split())
    status = evolve("status", "--run-dir", str(copy))
    assert long.strip() in status.stdout
    report = evolve("report", "--run-dir", str(copy))
    assert report.returncode == 0
    assert long.strip() in (copy / "report" / "report.md").read_text()
