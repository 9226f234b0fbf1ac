"""Red team against containment: each hostile train.py of tests/redteam_sources.py runs
through a real LocalArena on the default corpus (the package whose data file holds
every book), and must score no better than honest code, be counted for the memory it
holds, or be refused. `python tests/redteam_sources.py` prints the same runs as a table
(from /work/main: the scores before these defences).
"""

import pytest
from arena_helpers import HAS_BWRAP
from redteam_sources import FLOOD_MB, SCRATCH_MB, SHARED_MB, run_all, table

from arena.guards import seed_insensitive
from arena.records import Status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the module's runs, on a busy machine
    pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap (bwrap) is not installed"),
]
HONEST_FLOOR = 2.0  # bpb: the tiny model trained honestly stays far above this


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    results = run_all(tmp_path_factory.mktemp("redteam"))
    print("\n" + table(results))  # the "after" table (pytest -s shows it)
    return results


def log_of(r) -> str:
    return open(r.log_path, errors="replace").read()


def eval_log_of(r) -> str:
    return open(r.log_path.replace(".log", ".eval.log"), errors="replace").read()


def test_the_honest_root_is_measured(runs):
    for seed in (0, 1):
        r = runs[("root", seed)]
        assert r.status is Status.EVALUATED, r.message
        assert HONEST_FLOOR < r.val_bpb < 8.5


def test_a_checkpoint_cannot_carry_the_evaluation_text(runs):
    r = runs[("lookup_in_checkpoint", 0)]
    assert r.status is Status.EVALUATED, r.message
    text = log_of(r)
    assert "TRICK refused in training" in text and "TRICK worked" not in text
    assert r.val_bpb > HONEST_FLOOR


def test_the_model_worker_cannot_rebuild_the_evaluation_text(runs):
    r = runs[("lookup_in_worker", 0)]
    assert r.status is Status.EVALUATED, r.message
    text = eval_log_of(r)
    assert "TRICK refused in the worker" in text and "TRICK worked" not in text
    assert r.val_bpb > HONEST_FLOOR


def test_what_is_kept_in_tmp_and_dev_shm_counts_as_memory(runs):
    r = runs[("scratch_hog", 0)]
    assert r.status is Status.EVALUATED, r.message
    assert log_of(r).count(f"HOG kept {SCRATCH_MB} MB") == 2
    assert r.peak_mem_mb > 2 * SCRATCH_MB  # both hogs, plus the process itself


def test_a_flood_of_output_is_not_kept(runs):
    r = runs[("stdout_flood", 0)]
    assert r.status is Status.EVALUATED, r.message
    text = log_of(r)
    assert len(text) < 10 * 2**20 < FLOOD_MB * 2**20
    assert "output past the log cap of 8 MB was dropped" in text
    assert text.rstrip().endswith("device: cpu")  # the tail (the summary block) is kept


def test_fork_heavy_honest_code_is_not_overstated(runs):
    r, root = runs[("fork_heavy", 0)], runs[("root", 0)]
    assert r.status is Status.EVALUATED, r.message
    # the shared array counts once, not once per worker (5 x 400 MB by the RSS sum)
    assert r.peak_mem_mb < root.peak_mem_mb + 1.5 * SHARED_MB


def test_a_fixed_seed_is_refused(runs):
    for seed in (0, 1):
        r = runs[("fixed_seed", seed)]
        assert r.status is Status.GUARD_REFUSED
        assert "seeds a random generator with a fixed value" in r.message


def test_a_hidden_fixed_seed_is_flagged_by_its_results(runs):
    hidden = {s: runs[("hidden_seed", s)].val_bpb for s in (0, 1)}
    honest = {s: runs[("root", s)].val_bpb for s in (0, 1)}
    assert None not in hidden.values()
    assert "ignores the harness's seed" in seed_insensitive(hidden)
    assert seed_insensitive(honest) is None
