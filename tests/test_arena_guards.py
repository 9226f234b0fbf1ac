"""Guards before any run: only train.py, harness intact, compiles, no fixed seeds, no
no-ops or duplicates; after the runs, results that ignore the seed are flagged."""

import pytest
from arena_helpers import TINY_TRAIN, make_repo

from arena.guards import (
    check,
    check_safety,
    fixed_seeds,
    is_secret_name,
    normalized_hash,
    scrub_env,
    seed_insensitive,
)
from arena.records import Status


def _repo(tmp_path):
    return make_repo(tmp_path / "run")


def test_a_real_change_passes(tmp_path):
    repo = _repo(tmp_path)
    c = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "x")
    v = check(repo, c, set())
    assert v.ok and v.status is Status.PROPOSED
    assert v.normalized_diff_hash == normalized_hash(repo.read_file(c, "train.py"))


def test_diff_touching_another_file_is_refused(tmp_path):
    repo = _repo(tmp_path)
    c = repo.commit_files(
        [repo.root_commit],
        {"train.py": TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "program.md": "be greedy\n"},
        "x",
    )
    v = check(repo, c, set())
    assert not v.ok and v.status is Status.GUARD_REFUSED
    assert v.message == "the diff changes program.md besides train.py; only train.py may change"


def test_added_file_is_refused(tmp_path):
    repo = _repo(tmp_path)
    c = repo.commit_files([repo.root_commit], {"helper.py": "x = 1\n"}, "x")
    assert "helper.py" in check_safety(repo, c).message


def test_changed_harness_is_refused_even_two_generations_later(tmp_path):
    repo = _repo(tmp_path)
    bad = repo.commit_files([repo.root_commit], {"prepare.py": "SEQ_LEN = 1\n"}, "tamper")
    child = repo.commit_candidate(bad, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "innocent child")
    v = check(repo, child, set())
    assert not v.ok and "prepare.py differs from the root commit" in v.message


def test_file_that_does_not_compile_is_refused_with_the_line(tmp_path):
    repo = _repo(tmp_path)
    c = repo.commit_candidate(repo.root_commit, TINY_TRAIN + "\ndef broken(:\n", "x")
    v = check(repo, c, set())
    assert not v.ok and v.message.startswith("train.py does not compile (line")


def test_comment_only_change_is_a_no_op(tmp_path):
    repo = _repo(tmp_path)
    c = repo.commit_candidate(
        repo.root_commit, "# a comment\n" + TINY_TRAIN.replace("DIM = 32", "DIM = 32  # same"), "x"
    )
    v = check(repo, c, set())
    assert not v.ok and v.message.startswith("no-op")


def test_duplicate_is_refused(tmp_path):
    repo = _repo(tmp_path)
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    seen = {check(repo, a, set()).normalized_diff_hash}
    b = repo.commit_candidate(
        repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24   # again"), "b"
    )
    v = check(repo, b, seen)
    assert not v.ok and v.message.startswith("duplicate")


def test_root_is_not_a_candidate_but_may_run(tmp_path):
    repo = _repo(tmp_path)
    assert not check(repo, repo.root_commit, set()).ok
    assert check_safety(repo, repo.root_commit).ok


def test_credentials_are_scrubbed():
    env = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OPENAI_API_KEY": "sk-1",
        "GITHUB_TOKEN": "g",
        "AWS_SECRET_ACCESS_KEY": "a",
        "AWS_ACCESS_KEY_ID": "b",
        "HF_TOKEN": "h",
        "ANTHROPIC_API_KEY": "c",
        "MY_PASSWORD": "p",
        "HOME": "/root",
        "PYTHONPATH": "/x",
        "LD_PRELOAD": "/evil.so",
        "SSH_AUTH_SOCK": "/tmp/agent",
    }
    assert scrub_env(env) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    assert is_secret_name("OPENAI_API_KEY") and is_secret_name("GOOGLE_APPLICATION_CREDENTIALS")
    assert not is_secret_name("PATH")


def test_a_fixed_seed_is_refused_with_the_place_and_the_fix(tmp_path):
    repo = _repo(tmp_path)
    pinned = TINY_TRAIN.replace(
        "    rt = prepare.runtime()\n", "    rt = prepare.runtime()\n    torch.manual_seed(1234)\n"
    )
    c = repo.commit_candidate(repo.root_commit, pinned, "lucky seed")
    v = check(repo, c, set())
    assert v.status is Status.GUARD_REFUSED
    assert v.message.startswith("train.py seeds a random generator with a fixed value")
    assert "torch.manual_seed(1234), line" in v.message
    assert "prepare.runtime().seed" in v.message
    assert not check_safety(repo, c).ok  # refused before every run too


@pytest.mark.parametrize(
    "source",
    [
        "torch.manual_seed(0)",
        "SEED = 7\nnp.random.seed(SEED)",
        "BASE = 3\nSEED = BASE * 2 + 1\nrandom.seed(SEED)",
        "g = torch.Generator().manual_seed(42)",
        "rng = random.Random(0)",
        "rng = np.random.default_rng(int('5'))",
        "torch.cuda.manual_seed_all(1)",
        "loader = prepare.TrainLoader(8, 64, seed=0)",
    ],
)
def test_fixed_seeds_are_found(source):
    assert fixed_seeds(source)


@pytest.mark.parametrize(
    "source",
    [
        "torch.manual_seed(rt.seed)",
        "torch.manual_seed(rt.seed + 1)",
        "SEED = 7\nSEED += rt.seed\ntorch.manual_seed(SEED)",
        "def seeded(seed):\n    torch.manual_seed(seed)",
        "for s in range(3):\n    random.seed(s)",
        "rng = np.random.default_rng()",
        "torch.manual_seed(int(os.environ['EVOLVE_SEED']))",
        "loader = prepare.TrainLoader(8, 64, seed=rt.seed)",
    ],
)
def test_seeds_from_the_harness_pass(source):
    assert fixed_seeds(source) == []


def test_the_template_and_the_fixture_pass():
    from arena_helpers import ROOT

    assert fixed_seeds((ROOT / "train_template.py").read_text()) == []
    assert fixed_seeds(TINY_TRAIN) == []


def test_results_that_do_not_vary_across_seeds_are_flagged():
    assert "ignores the harness's seed" in seed_insensitive({0: 5.123, 1: 5.123, 2: 5.123})
    assert seed_insensitive({0: 5.123, 1: 5.124}) is None
    assert seed_insensitive({0: 5.123}) is None  # one seed says nothing


@pytest.mark.slow
def test_the_loop_flags_a_candidate_whose_results_ignore_the_seed(tmp_path):
    from population.program import ProgramConfig
    from population.simulated import simulated_loop

    def flagged(sigma, where):
        cfg = ProgramConfig(generations=1, population=2)
        loop, store, _, arena = simulated_loop(where, cfg, sigma=sigma)
        try:
            loop.run()
        finally:
            arena.close()
        events = [e for e in store.events(500) if e["kind"] == "seed_insensitive"]
        store.close()
        return events

    # no seed-to-seed noise: every candidate gets one val_bpb on all its seeds
    events = flagged(0.0, tmp_path / "pinned")
    assert events and "ignores the harness's seed" in events[0]["message"]
    assert flagged(0.01, tmp_path / "honest") == []
