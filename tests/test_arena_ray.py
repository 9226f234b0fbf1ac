"""The Ray backend on two Ray nodes of this machine that share no working directory.

The head node has no CPUs for tasks, so every run goes to a worker node; each node
works under its own directory (`EVOLVE_NODE_DIR/evolve-ray/<node id>`), and the tasks
get no path of the head's: the commit, the harness and the data travel through Ray.
The protocol itself (cancel, close, queueing) is tested on Ray by
tests/test_arena_conformance.py.
"""

import os
import time
from pathlib import Path

import pytest
from arena_helpers import build_cache, make_repo, survivors

from arena.devices import detect_slots
from arena.records import RunOutcome, RunRequest, Status

ray = pytest.importorskip("ray")
SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"
QUICK = "import time\ntime.sleep(0.2)\n"  # ends at once without a checkpoint


def collect(arena, n, timeout):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += arena.poll(1.0)
    assert len(got) == n, f"only {len(got)} of {n} results in {timeout} s"
    return got


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout} s")


def add_node(cluster, num_cpus: int, attempts: int = 3):
    """Ray gives a node 30 s to register (hard-coded); on a machine under heavy load that
    can pass, so a failed start is tried again (a half-started node's processes end
    with this process, as Ray registers them for)."""
    for attempt in range(attempts):
        try:
            return cluster.add_node(num_cpus=num_cpus)
        except Exception:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def worktrees(node_root: Path, node_id: str) -> list[Path]:
    return list((node_root / "evolve-ray" / node_id[:16]).glob("runs/*/run/worktrees/*"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # three Ray nodes on a small CI machine start slowly
def test_two_nodes_without_shared_paths_run_cancel_and_survive_a_lost_node(
    tmp_path, monkeypatch
):
    from arena.ray_backend import RayArena

    data_dir = build_cache(tmp_path / "data")
    repo = make_repo(tmp_path / "run")
    quick = repo.commit_candidate(repo.root_commit, QUICK, "quick")
    sleeper = repo.commit_candidate(repo.root_commit, SLEEPER, "sleeper")
    node_root = tmp_path / "nodes"
    monkeypatch.setenv("EVOLVE_NODE_DIR", str(node_root))  # inherited by the nodes' workers
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "120")  # a loaded CI machine is slow
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        add_node(cluster, 0)  # the head: no CPU for tasks, so every run goes to a worker node
        node_b = add_node(cluster, 2)
        ray.init(address=cluster.address, log_to_driver=False)
        arena = RayArena(repo, data_dir, detect_slots("cpu:2"), mem_limit_mb=3000)
        arena.submit(RunRequest("root", repo.root_commit, 0, 2.0))
        [r] = collect(arena, 1, 300)
        assert r.outcome is RunOutcome.FINISHED and r.status is Status.EVALUATED, r.message
        assert r.val_bpb is not None and r.val_bpb > 0
        # the log came back to the head, the git note is on the head's repo
        assert Path(r.log_path).parent == repo.run_dir / "logs"
        assert "# arena: train.py" in Path(r.log_path).read_text()
        assert "evaluated" in repo.note(r.commit)
        # the runs happened on node B, in its own directory: nothing under the head's run dir
        assert not (repo.run_dir / "worktrees").exists() and not (repo.run_dir / "out").exists()
        assert (node_root / "evolve-ray" / node_b.node_id[:16] / "data").is_dir()

        arena.submit(RunRequest("sleeper", sleeper, 0, 60.0))
        wait_for(lambda: worktrees(node_root, node_b.node_id), 60, "worktree on node B")
        assert arena.cancel("sleeper") == 1
        [r] = collect(arena, 1, 30)
        assert r.outcome is RunOutcome.CANCELLED and r.status is Status.PROPOSED
        assert worktrees(node_root, node_b.node_id) == []
        assert survivors(node_root) == []

        # a node that dies mid-run: the run comes back without a verdict, to be redone (an arena
        # error, or cancelled when the dying node's supervisor was stopped first)
        arena.submit(RunRequest("sleeper", sleeper, 1, 60.0))
        wait_for(lambda: worktrees(node_root, node_b.node_id), 60, "second worktree on node B")
        cluster.remove_node(node_b, allow_graceful=False)
        [r] = collect(arena, 1, 120)
        assert r.outcome.is_redo() and r.status is Status.PROPOSED, r.message
        # its task may outlive its raylet a while: the arena tells it to stop
        wait_for(lambda: not survivors(node_root), 60, "end of the lost node's candidate")

        node_c = add_node(cluster, 2)  # a fresh node gets its own copy of the data
        arena.submit(RunRequest("quick", quick, 1, 2.0))
        [r] = collect(arena, 1, 240)
        assert r.outcome is RunOutcome.FINISHED and r.status is Status.CONTRACT_ERROR, r.message
        assert (node_root / "evolve-ray" / node_c.node_id[:16] / "data").is_dir()
        arena.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert survivors(node_root) == []
    assert repo.list_worktrees() == []
    assert os.listdir(node_root / "evolve-ray" / node_c.node_id[:16] / "runs") == []
