"""The warm evaluator (runner.WarmEvaluator): started while the candidate trains, it gives
the cold evaluator's verdict, runs nothing of the candidate before the go, and leaves
nothing behind when training fails or is cancelled."""

import time

import pytest
from arena_helpers import TINY_TRAIN, USE_BWRAP, build_cache, make_repo, survivors

from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunRequest, Status


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    return make_repo(tmp / "run"), build_cache(tmp / "data")


def run_one(repo, data_dir, commit, seed, budget=3.0, timeout=240, use_bwrap=USE_BWRAP, **config):
    with LocalArena(
        repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=3000, use_bwrap=use_bwrap, **config
    ) as arena:
        arena.submit(RunRequest("c", commit, seed, budget))
        [result] = arena.poll(timeout)
    return result


def leftovers(repo):
    out = repo.run_dir / "out"
    return sorted(p.name for p in out.glob("*.src")) + sorted(p.name for p in out.glob("*.eval.*"))


@pytest.mark.slow
def test_warm_and_cold_evaluation_give_the_same_numbers(world):
    repo, data_dir = world
    cold = run_one(repo, data_dir, repo.root_commit, 5, warm_evaluator=False)
    warm = run_one(repo, data_dir, repo.root_commit, 5, warm_evaluator=True)
    assert cold.status is Status.EVALUATED and warm.status is Status.EVALUATED, warm.message
    assert (warm.val_bpb, warm.test_bpb) == (cold.val_bpb, cold.test_bpb)
    assert leftovers(repo) == [] and survivors(repo.run_dir) == []


def test_nothing_of_the_candidate_runs_in_the_evaluator_before_the_go(world, tmp_path):
    """Imported by the evaluator's worker (not run as __main__), this train.py leaves a
    mark; run as the training, it fails if the mark exists before it ends. Without the
    sandbox, so that the worker can write the mark."""
    repo, data_dir = world
    mark = tmp_path / "imported"
    train = (
        f"import pathlib, time\nMARK = pathlib.Path({str(mark)!r})\n"
        "if __name__ != '__main__':\n    MARK.write_text('x')\n"
        + TINY_TRAIN.replace(
            'if __name__ == "__main__":\n    main()',
            'if __name__ == "__main__":\n    main()\n    time.sleep(3.0)\n'
            '    assert not MARK.exists(), "the evaluator imported train.py during training"',
        )
    )
    assert 'if __name__ == "__main__":\n    main()' in TINY_TRAIN
    commit = repo.commit_candidate(repo.root_commit, train, "marks its import")
    result = run_one(repo, data_dir, commit, 0, warm_evaluator=True, use_bwrap=False)
    assert result.status is Status.EVALUATED, result.message
    assert mark.exists()  # imported after all: by the evaluation, after the go


def test_a_crashed_training_stops_the_warm_evaluator(world):
    repo, data_dir = world
    commit = repo.commit_candidate(repo.root_commit, "raise SystemExit('broken on purpose')\n", "crash")
    t0 = time.monotonic()
    result = run_one(repo, data_dir, commit, 0, warm_evaluator=True, timeout=60)
    assert result.status is Status.CRASHED and "broken on purpose" in result.message
    assert time.monotonic() - t0 < 45
    assert leftovers(repo) == [] and survivors(repo.run_dir) == []


def test_cancel_during_training_stops_the_warm_evaluator(world):
    repo, data_dir = world
    sleeper = repo.commit_candidate(
        repo.root_commit, "import time\nwhile True:\n    time.sleep(1)\n", "sleeps"
    )
    with LocalArena(
        repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=3000, use_bwrap=USE_BWRAP,
        warm_evaluator=True,
    ) as arena:
        arena.submit(RunRequest("sleeper", sleeper, 0, 60.0))
        time.sleep(2.0)
        assert arena.cancel("sleeper") == 1
        [result] = arena.poll(60)
    assert result.status is Status.PROPOSED and "cancelled" in result.message
    assert leftovers(repo) == [] and survivors(repo.run_dir) == []
