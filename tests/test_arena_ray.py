"""The Ray backend on a local two-CPU Ray cluster: same API, same results as local."""

import time

import pytest

from arena.devices import detect_slots
from arena.records import RunRequest, Status
from arena_helpers import TINY_TRAIN, build_cache, make_repo, survivors

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_arena_runs_candidates_as_tasks(tmp_path):
    from arena.ray_backend import RayArena

    data_dir = build_cache(tmp_path / "data")
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    sleeper = repo.commit_candidate(repo.root_commit, "import time\ntime.sleep(600)\n", "sleeper")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        arena = RayArena(repo, data_dir, detect_slots("cpu:2"), mem_limit_mb=3000)
        assert arena.free_slots() == 2
        arena.submit(RunRequest("root", repo.root_commit, 0, 2.0))
        arena.submit(RunRequest("a", a, 0, 2.0))
        assert arena.free_slots() == 0
        got, deadline = {}, time.monotonic() + 240
        while len(got) < 2 and time.monotonic() < deadline:
            got.update({r.candidate_id: r for r in arena.poll(1.0)})
        assert got["root"].status is Status.EVALUATED, got["root"].message
        assert got["a"].status is Status.EVALUATED, got["a"].message
        assert got["root"].val_bpb != got["a"].val_bpb and got["a"].device_type == "cpu"
        arena.submit(RunRequest("sleeper", sleeper, 0, 60.0))
        time.sleep(8)  # let the task start its candidate
        assert arena.cancel("sleeper") == 1
        results, deadline = [], time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            results = arena.poll(1.0)
        [r] = results
        assert r.status is Status.PROPOSED and "cancelled" in r.message
        arena.close()
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 20  # the task's supervisor cleans up as it goes
    while survivors(repo.run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert survivors(repo.run_dir) == []
    assert repo.list_worktrees() == []
