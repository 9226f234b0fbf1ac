"""The `evolve` command line, run as a real process on the simulated arena."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def evolve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "population.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    r = evolve("--simulate", "--generations", "2", "--population", "3", "--run-dir", str(run_dir),
               "--sim-run-seconds", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert "generations finished: 2" in r.stdout  # the closing summary, printed even with -q
    assert "The unmodified train.py scored val_bpb" in r.stdout
    return run_dir


def test_run_then_status_and_report(sim_run):
    status = evolve("status", "--run-dir", str(sim_run))
    assert status.returncode == 0
    assert "stopped (reached 2 generations)" in status.stdout
    assert "archive (val-test gap" in status.stdout
    assert "val-test gap" in status.stdout and "gap +0.0020" in status.stdout
    report = evolve("report", "--run-dir", str(sim_run))
    assert report.returncode == 0, report.stderr
    assert " decided: " in report.stdout and "report.md" in report.stdout
    md = (sim_run / "report" / "report.md").read_text()
    assert "![progress](progress.png)" in md and "## Lineage of" in md and "| 2 |" in md


def test_export_best_as_file_patch_and_series(sim_run, tmp_path):
    f = evolve("export", "--best", "--format", "file", "--run-dir", str(sim_run))
    assert f.returncode == 0 and "DEPTH =" in f.stdout
    p = evolve("export", "--best", "--format", "patch", "--run-dir", str(sim_run))
    assert p.returncode == 0 and p.stdout.startswith("From: evolve <evolve@localhost>")
    assert "diff --git a/train_template.py b/train_template.py" in p.stdout
    out = tmp_path / "series.mbox"
    s = evolve("export", "--best", "--format", "series", "--out", str(out), "--run-dir", str(sim_run))
    assert s.returncode == 0, s.stderr
    assert out.read_text().startswith("From ") and "Subject: [PATCH 1/" in out.read_text()


def test_named_errors_are_one_line_with_exit_code_1(sim_run, tmp_path):
    again = evolve("--simulate", "--generations", "1", "--run-dir", str(sim_run))
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr
    unknown = evolve("export", "--candidate", "nope", "--format", "file", "--run-dir", str(sim_run))
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    bad = tmp_path / "program.md"
    bad.write_text("+++\npopulation = 3\n[seeds]\nroot = \"three\"\n+++\nprose\n")
    r = evolve("--simulate", "--program", str(bad), "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 1
    assert f"{bad}:4: seeds.root must be int" in r.stderr
    assert not (tmp_path / "x").exists()  # nothing was created
    missing = evolve("status", "--run-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no run in" in missing.stderr and missing.stderr.count("\n") == 1


def test_usage_errors_exit_2():
    assert evolve("--generations", "many").returncode == 2
    assert evolve("export", "--best").returncode == 2  # --format is required


@pytest.mark.parametrize("sub", ["status", "report", "export", "tui"])
def test_every_subcommand_has_help(sub):
    r = evolve(sub, "-h")
    assert r.returncode == 0 and "usage:" in r.stdout and len(r.stdout) > 80


def test_main_help_names_the_subcommands():
    r = evolve("-h")
    assert r.returncode == 0
    for word in ("--generations", "--resume", "--simulate", "status", "export", "prepare"):
        assert word in r.stdout


def test_prepare_delegates_to_prepare_py():
    r = evolve("prepare", "--help")
    assert r.returncode == 0 and "--source" in r.stdout and "--tokenizer" in r.stdout


def test_status_reads_a_running_store_without_blocking_it(tmp_path):
    run_dir = tmp_path / "live"
    p = subprocess.Popen([sys.executable, "-m", "population.cli", "--simulate", "--generations", "3",
                          "--population", "3", "--sim-run-seconds", "0.2", "--run-dir", str(run_dir), "-q"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen_running = False
        for _ in range(100):
            if (run_dir / "evolve.db").exists():
                r = evolve("status", "--run-dir", str(run_dir))
                assert r.returncode == 0, r.stderr
                if "running" in r.stdout.splitlines()[1]:
                    seen_running = True
                    break
            if p.poll() is not None:
                break
            time.sleep(0.2)
        assert seen_running
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()  # the writer was never blocked
    finally:
        if p.poll() is None:
            p.kill()


def test_a_real_run_with_bad_devices_or_no_data_creates_nothing(tmp_path):
    r = evolve("--generations", "1", "--devices", "cpu:x", "--run-dir", str(tmp_path / "a"))
    assert r.returncode == 1 and "--devices" in r.stderr and r.stderr.count("\n") == 1
    r = evolve("--generations", "1", "--data-dir", str(tmp_path / "nodata"), "--run-dir", str(tmp_path / "b"))
    assert r.returncode == 1 and "prepare" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
