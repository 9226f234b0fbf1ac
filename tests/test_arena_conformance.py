"""One suite of contract tests (arena/protocol.py) run over every Arena backend.

Backends: LocalArena (this machine), RayArena (a local two-CPU Ray cluster) and
SimulatedArena (no training). A "quick" run ends by itself in well under a second of
candidate time (on the real arenas a train.py that sleeps 0.2 s and writes no
checkpoint: a finished run whose verdict is a contract error); a "long" run lasts
until it is cancelled.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from arena_helpers import build_cache, make_repo, survivors

from arena.devices import detect_slots
from arena.protocol import Arena, ArenaClosed
from arena.records import RunOutcome, RunRequest, Status

QUICK = "import time\ntime.sleep(0.2)\n"
LONG = "import time\nwhile True:\n    time.sleep(1)\n"


@dataclass
class Backend:
    name: str
    make: Callable[[int, bool], Arena]  # (slots, long runs?) -> a fresh arena
    quick: str  # commit of a quick run
    long: str  # commit of a long run
    check_clean: Callable[[], None]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conformance")
    data_dir = build_cache(tmp / "data")
    repo = make_repo(tmp / "run")
    quick = repo.commit_candidate(repo.root_commit, QUICK, "quick")
    long = repo.commit_candidate(repo.root_commit, LONG, "long")
    return tmp, repo, data_dir, quick, long


def _local(world) -> Backend:
    from arena.local import LocalArena

    _tmp, repo, data_dir, quick, long = world

    def make(slots: int, _long: bool) -> Arena:
        return LocalArena(repo, data_dir, detect_slots(f"cpu:{slots}"), mem_limit_mb=2048)

    def clean() -> None:
        assert survivors(repo.run_dir) == []
        assert repo.list_worktrees() == []

    return Backend("local", make, quick, long, clean)


def _simulated(world) -> Backend:
    from population.simulated import SIM_TRAIN_PY, SimulatedArena

    def make(slots: int, long: bool) -> Arena:
        return SimulatedArena(lambda commit: SIM_TRAIN_PY, slots, run_seconds=600 if long else 0.2)

    return Backend("simulated", make, "quick-commit", "long-commit", lambda: None)


@pytest.fixture(scope="module")
def ray_cluster(world):
    ray = pytest.importorskip("ray")
    tmp = world[0]
    old = os.environ.get("EVOLVE_NODE_DIR")
    os.environ["EVOLVE_NODE_DIR"] = str(tmp / "nodes")  # inherited by Ray's workers
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # a loaded machine is slow
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield tmp / "nodes"
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("EVOLVE_NODE_DIR", None)
        else:
            os.environ["EVOLVE_NODE_DIR"] = old


def _ray(world, nodes: Path) -> Backend:
    from arena.ray_backend import RayArena

    _tmp, repo, data_dir, quick, long = world

    def make(slots: int, _long: bool) -> Arena:
        return RayArena(repo, data_dir, detect_slots(f"cpu:{slots}"), mem_limit_mb=2048)

    def clean() -> None:
        assert survivors(nodes) == []
        assert list(nodes.glob("evolve-ray/*/runs/*")) == []
        assert not (repo.run_dir / "worktrees").exists() or repo.list_worktrees() == []

    return Backend("ray", make, quick, long, clean)


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.slow),  # real processes: seconds per run
        pytest.param("ray", marks=pytest.mark.slow),
        "simulated",
    ]
)
def backend(request, world):
    if request.param == "local":
        b = _local(world)
    elif request.param == "simulated":
        b = _simulated(world)
    else:
        b = _ray(world, request.getfixturevalue("ray_cluster"))
    yield b
    b.check_clean()


def collect(arena: Arena, n: int, timeout: float = 120) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += arena.poll(0.5)
    assert len(got) == n, f"only {len(got)} of {n} results in {timeout} s"
    return got


def keys(results) -> list[tuple[str, int]]:
    return sorted((r.candidate_id, r.seed) for r in results)


def test_every_request_gives_one_finished_result_also_past_the_free_slots(backend):
    arena = backend.make(2, False)
    try:
        assert isinstance(arena, Arena)
        assert arena.free_slots() == 2 and arena.busy() == 0
        requests = [RunRequest(f"c{i}", backend.quick, i, 1.0) for i in range(3)]
        for r in requests:
            arena.submit(r)  # the third waits for a slot
        assert arena.free_slots() == 0
        results = collect(arena, 3)
        assert keys(results) == keys(requests)
        for r in results:
            assert r.outcome is RunOutcome.FINISHED and not r.outcome.is_redo()
            assert r.status is not Status.PROPOSED and r.status is not Status.RUNNING, r.message
            assert r.commit == backend.quick
        assert arena.poll(0.2) == []
        assert arena.busy() == 0 and arena.free_slots() == 2
    finally:
        arena.close()


def test_cancel_stops_running_and_queued_runs_of_one_candidate(backend):
    arena = backend.make(1, True)
    try:
        arena.submit(RunRequest("x", backend.long, 0, 60.0))
        arena.submit(RunRequest("x", backend.long, 1, 60.0))  # queued behind it
        arena.submit(RunRequest("y", backend.long, 0, 60.0))
        assert arena.busy() == 3 and arena.free_slots() == 0
        time.sleep(1.0)  # let the first one start
        assert arena.cancel("x") == 2
        assert arena.cancel("nobody") == 0
        results = collect(arena, 2, timeout=60)
        assert keys(results) == [("x", 0), ("x", 1)]
        for r in results:
            assert r.outcome is RunOutcome.CANCELLED and r.outcome.is_redo()
            assert r.status is Status.PROPOSED
        assert arena.busy() == 1  # y took the freed slot
    finally:
        arena.close()
    [y] = collect(arena, 1, timeout=60)
    assert (y.candidate_id, y.outcome) == ("y", RunOutcome.CANCELLED)


def test_cancel_with_a_seed_stops_only_that_run(backend):
    arena = backend.make(1, True)
    try:
        arena.submit(RunRequest("x", backend.long, 0, 60.0))
        arena.submit(RunRequest("x", backend.long, 1, 60.0))  # queued behind it
        time.sleep(1.0)
        assert arena.cancel("x", seed=1) == 1
        assert arena.cancel("x", seed=7) == 0
        [r] = collect(arena, 1, timeout=60)
        assert (r.candidate_id, r.seed, r.outcome) == ("x", 1, RunOutcome.CANCELLED)
        assert arena.busy() == 1
        assert isinstance(arena.progress(), dict)  # a long run prints no progress line
    finally:
        arena.close()
    [r] = collect(arena, 1, timeout=60)
    assert (r.seed, r.outcome) == (0, RunOutcome.CANCELLED)


def test_close_cancels_everything_and_then_refuses_work(backend):
    arena = backend.make(1, True)
    arena.submit(RunRequest("a", backend.long, 0, 60.0))
    arena.submit(RunRequest("b", backend.long, 0, 60.0))
    time.sleep(1.0)
    arena.close()
    arena.close()  # idempotent
    results = arena.poll(0.0)  # close waited: every result is done
    assert keys(results) == [("a", 0), ("b", 0)]
    assert all(r.outcome is RunOutcome.CANCELLED for r in results)
    assert arena.poll(0.2) == []
    assert arena.free_slots() == 0 and arena.busy() == 0 and arena.cancel("a") == 0
    with pytest.raises(ArenaClosed):
        arena.submit(RunRequest("c", backend.quick, 0, 1.0))


def test_a_request_that_cannot_run_is_refused_at_once(backend):
    arena = backend.make(1, False)
    try:
        with pytest.raises(ValueError, match="budget_s must be positive"):
            arena.submit(RunRequest("a", backend.quick, 0, 0.0))
        assert arena.busy() == 0
    finally:
        arena.close()


def test_submit_from_several_threads_while_another_polls(backend):
    arena = backend.make(2, False)
    requests = [RunRequest(f"t{i}", backend.quick, i, 1.0) for i in range(6)]
    try:
        threads = [
            threading.Thread(target=lambda rs=requests[i::3]: [arena.submit(r) for r in rs])
            for i in range(3)
        ]
        for t in threads:
            t.start()
        results = collect(arena, 6)
        for t in threads:
            t.join()
        assert keys(results) == keys(requests)
    finally:
        arena.close()
