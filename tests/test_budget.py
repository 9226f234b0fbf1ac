"""The load-immune budget, piece by piece: the harness's clock, the supervisor's CPU
measurement and limit, the limits and their calibration on the root, the runner's
classification of overruns, the thread environment, and the stored figure.

Real processes and a real SQLite store; the whole path through a LocalArena, with
cheating candidates, is in tests/test_budget_arena.py.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import prepare
from arena.budget import (
    MIN_SLACK_S,
    OVERHEAD_FACTOR,
    SLACK_FRACTION,
    Limits,
    StartupCalibration,
)
from arena.devices import Slot
from arena.records import RunResult, Status
from arena.runner import PACKAGE_ROOT, candidate_env, classify_training
from population.store import Candidate, Store

ROOT = Path(__file__).resolve().parent.parent


def burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def ticked_clock(budget_s: float = 100.0) -> prepare.BudgetClock:
    clock = prepare.BudgetClock(budget_s, device="cpu")
    for _ in range(prepare.WARMUP_STEPS + 1):
        clock.tick()
    return clock


# -- the harness's clock ------------------------------------------------------------


def test_cpu_clock_does_not_count_time_the_process_does_not_compute(monkeypatch):
    monkeypatch.setenv("EVOLVE_THREADS", "1")
    clock = ticked_clock()
    time.sleep(0.4)  # descheduled (a busy machine) or waiting: no CPU time
    clock.tick()
    assert clock.elapsed() < 0.05
    burn_cpu(0.3)
    clock.tick()
    assert 0.28 < clock.elapsed() < 0.4


def test_cpu_clock_divides_by_threads_at_most_the_slots(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("EVOLVE_THREADS", "2")
        clock = ticked_clock()
        burn_cpu(0.4)
        clock.tick()
        assert 0.19 < clock.elapsed() < 0.26  # 0.4 CPU s over 2 threads
        monkeypatch.setenv("EVOLVE_THREADS", "1")  # a slot of 1: more torch threads buy nothing
        clock = ticked_clock()
        burn_cpu(0.2)
        clock.tick()
        assert 0.19 < clock.elapsed() < 0.26
    finally:
        torch.set_num_threads(threads)


def test_thread_environment_is_set_by_prepare_and_the_arena(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in prepare.CPU_THREAD_ENV}
    env["PYTHONPATH"] = str(ROOT)
    code = "import os, prepare; print(os.environ['OMP_WAIT_POLICY'], os.environ['KMP_BLOCKTIME'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "0"]
    slot = Slot("cpu:0", "cpu", "cpu", None, 2)
    cenv = candidate_env(slot, 0, 5.0, tmp_path, tmp_path, tmp_path)
    assert cenv["OMP_WAIT_POLICY"] == "PASSIVE" and cenv["OMP_NUM_THREADS"] == "2"


def test_runtime_warns_when_torch_was_loaded_with_spinning_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in prepare.CPU_THREAD_ENV}
    env.update(PYTHONPATH=str(ROOT), EVOLVE_DEVICE="cpu")
    late = "import torch, prepare; prepare.runtime()"
    first = "import prepare, torch; prepare.runtime()"
    err = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stderr for code in (late, first)]
    assert "OMP_WAIT_POLICY=PASSIVE" in err[0]
    assert "OMP_WAIT_POLICY" not in err[1]


# -- the supervisor's CPU measurement and limit ---------------------------------------


def supervise(tmp_path: Path, code: str, wall_limit_s: float, cpu_limit_s: float | None,
              load_adjusted: bool = False) -> dict:
    spec = {
        "argv": [sys.executable, "-c", textwrap.dedent(code)],
        "cwd": str(tmp_path),
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "log_path": str(tmp_path / "run.log"),
        "wall_limit_s": wall_limit_s,
        "cpu_limit_s": cpu_limit_s,
        "wall_load_adjusted": load_adjusted,
        "mem_limit_mb": 2048,
        "term_grace_s": 1.0,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    subprocess.run(
        [sys.executable, "-m", "arena.supervise", str(tmp_path / "spec.json"),
         str(tmp_path / "result.json")],
        cwd=PACKAGE_ROOT, env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}, check=True,
        timeout=300,
    )
    return json.loads((tmp_path / "result.json").read_text())


BURN = """
import time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
"""


@pytest.mark.slow
def test_supervisor_counts_the_cpu_time_of_the_whole_tree_escaped_children_included(tmp_path):
    code = BURN + """
import os
if os.fork() == 0:          # a grandchild that escapes by double forking
    if os.fork() == 0:
        os.setsid()
        burn(0.6)
    os._exit(0)
burn(0.6)
os.wait()
time.sleep(2)               # outlives nothing: the escaped grandchild finishes first
"""
    report = supervise(tmp_path, code, wall_limit_s=120, cpu_limit_s=60)
    assert report["returncode"] == 0 and not report["cpu_killed"]
    assert 1.2 <= report["cpu_seconds"] < 3.0, report


@pytest.mark.slow
def test_supervisor_kills_at_the_cpu_limit_and_not_a_sleeper(tmp_path):
    report = supervise(tmp_path, BURN + "burn(60)\n", wall_limit_s=300, cpu_limit_s=1.0)
    assert report["cpu_killed"] and not report["timed_out"]
    assert 1.0 < report["cpu_seconds"] < 10.0
    sleeper = supervise(tmp_path, "import time\ntime.sleep(60)\n", wall_limit_s=2, cpu_limit_s=1.0,
                        load_adjusted=True)  # a sleeper is not starved: its wall time counts
    assert sleeper["timed_out"] and not sleeper["cpu_killed"]
    assert sleeper["cpu_seconds"] < 1.0


# -- limits, calibration, classification --------------------------------------------


def test_limits_count_cpu_per_thread_on_cpu_and_wall_on_cuda():
    cpu = Limits(60.0, 10.0, "cpu", 4, wall_factor=4.0)
    assert cpu.cpu_limit_s == 280.0 and cpu.wall_limit_s == 280.0
    assert not cpu.over(cpu_seconds=279.0, wall_seconds=1000.0)  # slow because loaded: fine
    assert cpu.over(cpu_seconds=281.0, wall_seconds=70.0)
    cuda = Limits(60.0, 10.0, "cuda", 1)
    assert cuda.cpu_limit_s is None and cuda.wall_limit_s == 70.0
    assert cuda.over(cpu_seconds=0.0, wall_seconds=71.0)


def result(commit: str, status=Status.EVALUATED, cpu=None, wall=None, device="cpu") -> RunResult:
    return RunResult(candidate_id="c", commit=commit, seed=0, status=status, cpu_seconds=cpu,
                     training_seconds=wall, device_type=device, device_name="x")


def test_allowance_follows_the_roots_measured_start_up():
    cal = StartupCalibration("root", default_s=60.0)
    assert cal.limits(10.0, "cpu", 2).allowance_s == 60.0  # not measured yet
    cal.observe(result("child", cpu=100.0), 10.0, 2)  # only the root calibrates
    cal.observe(result("root", status=Status.CRASHED, cpu=100.0), 10.0, 2)
    assert cal.limits(10.0, "cpu", 2).allowance_s == 60.0
    cal.observe(result("root", cpu=26.0), 10.0, 2)  # 13 budget s: 3 s of start-up
    cal.observe(result("root", cpu=24.0), 10.0, 2)  # the largest counts
    lim = cal.limits(10.0, "cpu", 2)
    assert lim.allowance_s == pytest.approx(OVERHEAD_FACTOR * 3.0 + MIN_SLACK_S)
    assert "root's measured start-up 3.0 s" in lim.basis
    assert cal.limits(10.0, "cpu", 1).allowance_s == 60.0  # another kind of slot
    cal.observe(result("root", wall=75.0, device="cuda"), 60.0, 1)  # CUDA: wall time
    assert cal.limits(60.0, "cuda", 1).allowance_s == pytest.approx(
        OVERHEAD_FACTOR * 15.0 + SLACK_FRACTION * 60.0  # the slack grows with the budget
    )


def report(**kw) -> dict:
    base = {"returncode": 0, "timed_out": False, "mem_killed": False, "cancelled": False,
            "wall_s": 30.0, "peak_rss_mb": 10.0, "tree_peak_mb": 10.0, "gpu_peak_mb": 0.0,
            "leftovers_killed": 0, "error": "", "cpu_seconds": 20.0, "cpu_killed": False}
    return {**base, **kw}


def test_classification_of_overruns(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "build.json").write_text("{}")
    lim = Limits(10.0, 5.0, "cpu", 2, wall_factor=4.0, basis="2 x the root's")
    ok = classify_training(report(cpu_seconds=29.0, wall_s=500.0), "", tmp_path, lim, False)
    assert ok == (Status.RUNNING, "trained")
    status, msg = classify_training(report(cpu_seconds=31.0), "", tmp_path, lim, False)
    assert status is Status.TIMEOUT and msg.startswith("refused: over its CPU-time budget")
    assert "used 31.0 CPU s; the limit is 30.0 = (budget 10 s + startup allowance 5 s" in msg
    status, msg = classify_training(report(cpu_seconds=31.0, cpu_killed=True, returncode=-15),
                                    "", tmp_path, lim, False)
    assert status is Status.TIMEOUT and msg.startswith("killed at the CPU-time limit")
    status, msg = classify_training(report(timed_out=True, returncode=-15), "", tmp_path, lim,
                                    False)
    assert status is Status.TIMEOUT
    assert msg.startswith("killed at the wall limit of 60 s (4 x (budget 10 s")
    assert "counted at the share of a core the machine could give it" in msg


def test_machine_share_is_a_fraction_of_a_core():
    from arena.supervise import _machine_share

    assert 0.0 < _machine_share() <= 1.0


# -- the stored figure --------------------------------------------------------------


def test_store_keeps_cpu_seconds(tmp_path):
    with Store.open(tmp_path / "evolve.db") as store:
        store.add_candidate(Candidate(id="c", generation=0, idx=0, parent_id=None, persona="root",
                                      status=Status.PROPOSED, archive_version=0, commit="abc"))
        eid = store.start_evaluation("c", 0, 0, "root")
        store.finish_evaluation(eid, result("abc", cpu=12.5))
        assert store.evaluations("c")[0].cpu_seconds == 12.5
