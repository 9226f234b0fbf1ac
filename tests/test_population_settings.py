"""A run keeps its settings: `--resume` uses them, a conflicting flag is refused, and
resume or a new run on a wrong path is one line saying what to do. Real `evolve`
processes on the simulated arena."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def evolve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "population.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def sessions(run_dir: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{run_dir / 'evolve.db'}?mode=ro", uri=True)
    try:
        return [json.loads(c) for (c,) in conn.execute("SELECT config FROM runs ORDER BY id")]
    finally:
        conn.close()


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("evolve: error: "), r.stderr
    return r.stderr


@pytest.mark.slow
def test_resume_keeps_the_run_settings_and_refuses_conflicting_flags(tmp_path):
    run = tmp_path / "run"
    first = evolve("--simulate", "--budget", "10", "--generations", "1", "--population", "2",
                   "--sim-run-seconds", "0", "--run-dir", str(run), "-q")
    assert first.returncode == 0, first.stderr
    # a plain --resume (what the interrupt message suggests) runs with the run's settings, not program.md's
    again = evolve("--resume", "--run-dir", str(run), "--generations", "2", "-q")
    assert again.returncode == 0, again.stderr
    cfgs = sessions(run)
    assert len(cfgs) == 2
    assert all(c["budget_s"] == 10 and c["population"] == 2 for c in cfgs)  # program.md says 60 and 4
    assert cfgs[1]["generations"] == 2  # a stopping criterion may move
    assert "generations finished: 2" in again.stdout
    for flag, value, shown in (("--budget", "30", "--budget 10"), ("--population", "3", "--population 2"),
                               ("--seed", "5", "--seed 0")):
        err = one_line_error(evolve("--resume", "--run-dir", str(run), flag, value))
        assert shown in err and f"drop {flag}" in err
    err = one_line_error(evolve("--resume", "--run-dir", str(run), "--program", str(ROOT / "program.md")))
    assert "drop --program" in err
    assert len(sessions(run)) == 2  # a refused resume starts no session
    same = evolve("--resume", "--run-dir", str(run), "--budget", "10", "--population", "2", "-q")
    assert same.returncode == 0, same.stderr  # repeating the run's own values is no conflict


def test_resume_on_a_missing_or_foreign_path_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    err = one_line_error(evolve("--simulate", "--resume", "--run-dir", str(missing)))
    assert "does not exist" in err and "drop --resume" in err
    assert not missing.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    err = one_line_error(evolve("--simulate", "--resume", "--run-dir", str(foreign)))
    assert "holds no run" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_missing_program_file_is_one_line(tmp_path):
    err = one_line_error(evolve("--simulate", "--program", str(tmp_path / "missing.md"),
                                "--run-dir", str(tmp_path / "run")))
    assert "no such file" in err and "missing.md" in err
    assert not (tmp_path / "run").exists()


def test_an_impossible_simulation_setting_is_one_line(tmp_path):
    err = one_line_error(evolve("--simulate", "--sim-slots", "0", "--run-dir", str(tmp_path / "run")))
    assert "--sim-slots must be at least 1" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_from_before_settings_were_kept_resumes_with_its_first_sessions_settings(tmp_path):
    run = tmp_path / "run"
    first = evolve("--simulate", "--budget", "10", "--generations", "1", "--population", "2",
                   "--sim-run-seconds", "0", "--run-dir", str(run), "-q")
    assert first.returncode == 0, first.stderr
    conn = sqlite3.connect(run / "evolve.db")  # as the store was before migration 0004_run_settings
    with conn:
        conn.execute("DROP TABLE run_settings")
        conn.execute("DELETE FROM schema_migrations WHERE name = '0004_run_settings'")
        conn.execute("INSERT INTO meta (key, value) VALUES ('mode', '\"simulate\"')")
    conn.close()
    again = evolve("--resume", "--run-dir", str(run), "--generations", "2", "-q")
    assert again.returncode == 0, again.stderr
    cfgs = sessions(run)
    assert [(c["budget_s"], c["population"]) for c in cfgs] == [(10, 2), (10, 2)]
    conn = sqlite3.connect(f"file:{run / 'evolve.db'}?mode=ro", uri=True)
    try:
        names = [n for (n,) in conn.execute("SELECT name FROM schema_migrations ORDER BY id")]
    finally:
        conn.close()
    assert names[-1] == "0004_run_settings"  # upgraded in place
