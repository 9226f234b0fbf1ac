"""LocalArena: concurrent slots, determinism, cancel, and the evaluator's entry point."""

import json
import os
import subprocess
import sys
import time

import pytest
from arena_helpers import ROOT, TINY_TRAIN, build_cache, make_repo, survivors

from arena.devices import Slot, cpu_name, detect_slots
from arena.local import LocalArena
from arena.records import RunRequest, Status


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    data_dir = build_cache(tmp / "data")
    repo = make_repo(tmp / "run")
    return repo, data_dir


def collect(arena, n, timeout=300):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += arena.poll(1.0)
    assert len(got) == n, f"only {len(got)} of {n} results"
    return {(r.candidate_id, r.seed): r for r in got}


@pytest.mark.slow
def test_two_slots_at_once_give_the_same_results_as_one_after_the_other(world):
    repo, data_dir = world
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    requests = [RunRequest("root", repo.root_commit, 3, 5.0), RunRequest("a", a, 3, 5.0)]
    with LocalArena(repo, data_dir, detect_slots("cpu:2"), mem_limit_mb=3000) as arena:
        assert arena.free_slots() == 2
        for r in requests:
            arena.submit(r)
        parallel = collect(arena, 2)
    one = [Slot("cpu:0", "cpu", cpu_name(), None, 1)]
    with LocalArena(repo, data_dir, one, mem_limit_mb=3000) as arena:
        for r in requests:
            arena.submit(r)
        assert arena.free_slots() == 0
        serial = collect(arena, 2)
    for key in parallel:
        p, s = parallel[key], serial[key]
        assert p.status is Status.EVALUATED and s.status is Status.EVALUATED, (p.message, s.message)
        assert p.val_bpb == s.val_bpb and p.test_bpb == s.test_bpb
        assert p.device_type == "cpu" and p.device_name == cpu_name()
    assert parallel[("root", 3)].val_bpb != parallel[("a", 3)].val_bpb


def test_cancel_stops_queued_and_running_runs(world):
    repo, data_dir = world
    sleeper = repo.commit_candidate(
        repo.root_commit, "import time\nwhile True:\n    time.sleep(1)\n", "sleeper"
    )
    with LocalArena(repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=2048) as arena:
        arena.submit(RunRequest("sleeper", sleeper, 0, 60.0))
        arena.submit(RunRequest("sleeper", sleeper, 1, 60.0))
        time.sleep(1.5)  # the first is running, the second queued
        assert arena.busy() == 2
        assert arena.cancel("sleeper") == 2
        results = collect(arena, 2, timeout=60)
    for r in results.values():
        assert r.status is Status.PROPOSED and "cancelled" in r.message
    assert survivors(repo.run_dir) == []
    assert repo.list_worktrees() == []


def test_bad_input_is_a_one_line_error(world, tmp_path):
    repo, data_dir = world
    with pytest.raises(ValueError, match="no prepared data at .*run `python prepare.py`"):
        LocalArena(repo, tmp_path, detect_slots("cpu:1"))
    with LocalArena(repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=2048) as arena:
        with pytest.raises(ValueError, match="budget_s must be positive"):
            arena.submit(RunRequest("x", repo.root_commit, 0, 0.0))
        arena.submit(RunRequest("x", "0" * 40, 0, 1.0))
        [r] = arena.poll(30)
    assert r.status is Status.GUARD_REFUSED and "unknown commit" in r.message


@pytest.mark.slow
def test_evaluator_entry_point_scores_a_trained_checkpoint(world, tmp_path):
    """`python -m arena.evaluate` on a worktree trained by hand (no arena around it)."""
    repo, data_dir = world
    out = tmp_path / "out"
    with repo.worktree(repo.root_commit) as wt:
        env = dict(
            os.environ,
            EVOLVE_BUDGET_S="2",
            EVOLVE_SEED="0",
            EVOLVE_DEVICE="cpu",
            EVOLVE_OUT=str(out),
            EVOLVE_DATA=str(data_dir),
            EVOLVE_THREADS="1",
        )
        subprocess.run(
            [sys.executable, "train.py"], cwd=wt, env=env, check=True, capture_output=True
        )
        result = tmp_path / "result.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "arena.evaluate",
                "--worktree",
                str(wt),
                "--out",
                str(out),
                "--data",
                str(data_dir),
                "--prepare",
                str(ROOT / "prepare.py"),
                "--result",
                str(result),
                "--mem-limit-mb",
                "3000",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(result.read_text())
    assert res["status"] == "evaluated" and res["probe"]["ok"] is True
    assert 0 < res["val_bpb"] < 8 and 0 < res["test_bpb"] < 8
    assert res["checked_rows"] >= 2 and res["probe"]["first_bad_position"] is None


def test_claimed_numbers_are_parsed_from_the_last_summary_block():
    from arena.runner import parse_summary, traceback_tail

    log = "step 1\n---\nval_bpb: 9\n\nmore\n---\nval_bpb: 0.010000\nnote: fast run\nbad line\n"
    assert parse_summary(log) == {"val_bpb": 0.01, "note": "fast run"}
    assert parse_summary("no block here\n") == {}
    tb = "noise\nTraceback (most recent call last):\n  File x\nKeyError: 'k'\n"
    assert traceback_tail(tb) == "Traceback (most recent call last):\n  File x\nKeyError: 'k'"


def test_without_bubblewrap_the_arena_says_what_is_not_enforced(world, caplog):
    repo, data_dir = world
    with caplog.at_level("WARNING", logger="arena.sandbox"):
        LocalArena(
            repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=2048, use_bwrap=False
        ).close()
    lines = [r.getMessage() for r in caplog.records if r.name == "arena.sandbox"]
    assert len(lines) == 7 and all(m.startswith("sandbox NOT enforced:") for m in lines)
    assert any("network" in m for m in lines) and any("evaluation splits" in m for m in lines)


def test_progress_shows_a_running_runs_lines_and_measured_memory(world):
    """What the evaluation cascade reads while a run trains (arena.progress)."""
    repo, data_dir = world
    talker = repo.commit_candidate(repo.root_commit, (
        "import time\n"
        "buf = b'x' * (64 << 20)  # 64 MB the supervisor should see\n"
        "for k in range(1, 4):\n"
        "    print(f'step {10 * k} ({25.0 * k:.1f}%) | loss: {3.0 - 0.1 * k:.4f} | tok/sec: 1000 | remaining: 9s',"
        " flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"), "talker")
    with LocalArena(repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=3000) as arena:
        arena.submit(RunRequest("talker", talker, 5, 60.0))
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            seen = arena.progress()
            run = seen.get(("talker", 5))
            if run and len(run.points) == 3 and (run.peak_mem_mb or 0) > 60:
                break
            time.sleep(0.5)
        run = seen[("talker", 5)]
        assert [(p.step, p.fraction, p.loss) for p in run.points] == [(10, 0.25, 2.9), (20, 0.5, 2.8), (30, 0.75, 2.7)]
        assert run.peak_mem_mb is not None and run.peak_mem_mb > 60
        assert arena.cancel("talker", seed=5) == 1
        [r] = collect(arena, 1).values()
        assert r.outcome.value == "cancelled"
    assert arena.progress() == {}
    assert not list((repo.run_dir / "logs").glob("*.live.json"))
