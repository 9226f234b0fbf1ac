"""Kill `evolve` with SIGKILL at random moments, resume, and compare with a run that was
never interrupted: no finished evaluation lost or redone, the same archive."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--simulate", "--generations", "3", "--population", "3", "--sim-run-seconds", "0.02", "-q"]


def start(run_dir: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "population.cli", *ARGS, "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read(run_dir: Path) -> tuple[dict, list, list]:
    """(finished evaluations by (candidate, seed), archive of the last generation, statuses)."""
    db = run_dir / "evolve.db"
    if not db.exists():
        return {}, [], []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        evals = {(c, s): (st, v, m) for c, s, st, v, m in conn.execute(
            "SELECT candidate_id, seed, status, val_bpb, peak_mem_mb FROM evaluations "
            "WHERE status NOT IN ('running', 'interrupted', 'cancelled')")}
        row = conn.execute("SELECT archive FROM generations ORDER BY generation DESC LIMIT 1").fetchone()
        statuses = list(conn.execute("SELECT id, parent_id, persona, hypothesis, status FROM candidates "
                                     "ORDER BY generation, idx"))
    except sqlite3.OperationalError:  # killed before the schema was committed
        return {}, [], []
    finally:
        conn.close()
    return evals, json.loads(row[0]) if row else [], statuses


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[tuple[dict, list, list], float]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.monotonic()
    p = start(run_dir, resume=False)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    return read(run_dir), time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_at_random_points_then_resume(tmp_path, reference, trial):
    (ref_evals, ref_archive, ref_statuses), duration = reference
    rng = random.Random(1000 + trial)
    kills, fresh = 0, 0
    while kills == 0 and fresh < 5:  # a run that ends before its first kill proves nothing: start over
        fresh += 1
        run_dir = tmp_path / f"run{fresh}"
        kills = _kill_and_resume(run_dir, rng, duration)
    assert kills >= 1
    evals, archive, statuses = read(run_dir)
    assert evals == ref_evals  # every evaluation done once, none missing, same results
    assert statuses == ref_statuses
    assert archive == ref_archive


def _kill_and_resume(run_dir: Path, rng: random.Random, duration: float) -> int:
    kills, attempts = 0, 0
    while True:
        before, _, _ = read(run_dir)
        p = start(run_dir, resume=run_dir.exists())  # a start killed before its run appeared starts anew
        attempts += 1
        try:  # a kill at a random moment of a run as long as the reference; the 6th start runs to the end
            p.wait(timeout=rng.uniform(0.2, duration) if kills < 5 else 120)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            after, _, _ = read(run_dir)
            # nothing finished before the kill was lost or changed by it
            assert {k: after.get(k) for k in before} == before
            continue
        assert p.returncode == 0, p.stderr.read().decode()
        return kills
