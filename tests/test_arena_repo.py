"""The experiment repository: real git, candidates as commits, crossovers as merges."""

import subprocess

import pytest
from arena_helpers import PREPARE, PROGRAM, TINY_TRAIN, make_repo

from arena.repo import ExperimentRepo, RepoError


def test_root_commit_holds_the_three_files(tmp_path):
    repo = make_repo(tmp_path / "run")
    root = repo.root_commit
    assert sorted(repo.tree_files(root)) == ["prepare.py", "program.md", "train.py"]
    assert repo.read_file(root, "prepare.py") == PREPARE
    assert repo.read_file(root, "program.md") == PROGRAM
    again = ExperimentRepo.open(tmp_path / "run")
    assert again.root_commit == root


def test_create_refuses_an_existing_repository(tmp_path):
    make_repo(tmp_path / "run")
    with pytest.raises(RepoError, match="already holds a git repository"):
        make_repo(tmp_path / "run")


def test_open_refuses_a_plain_directory(tmp_path):
    with pytest.raises(RepoError, match="not an experiment repository"):
        ExperimentRepo.open(tmp_path)


def test_candidate_commit_changes_only_train_py_and_git_log_shows_lineage(tmp_path):
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(
        repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "persona x: smaller"
    )
    b = repo.commit_candidate(
        a, TINY_TRAIN.replace("DIM = 32", "DIM = 16"), "persona y: smaller still"
    )
    assert repo.parents(b) == [a] and repo.parents(a) == [repo.root_commit]
    assert repo.changed_files(b) == {a: ["train.py"]}
    assert "DIM = 16" in repo.read_file(b, "train.py")
    assert repo.lineage(b) == [b, a, repo.root_commit]
    log = subprocess.run(
        ["git", "log", "--format=%s", b],
        cwd=repo.run_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log == [
        "persona y: smaller still",
        "persona x: smaller",
        "root: template train.py, harness prepare.py, program.md",
    ]
    # the run directory's own checkout is untouched
    assert (repo.run_dir / "train.py").read_text() == TINY_TRAIN


def test_merge_of_disjoint_edits_has_two_parents(tmp_path):
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    b = repo.commit_candidate(
        repo.root_commit, TINY_TRAIN.replace("LEARNING_RATE = 1e-2", "LEARNING_RATE = 2e-2"), "b"
    )
    m = repo.merge(a, b, "crossover of a and b")
    assert m is not None and repo.parents(m) == [a, b]
    merged = repo.read_file(m, "train.py")
    assert "DIM = 24" in merged and "LEARNING_RATE = 2e-2" in merged
    assert set(repo.lineage(m)) == {m, a, b, repo.root_commit}


def test_conflicting_merge_returns_none(tmp_path):
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    b = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 48"), "b")
    assert repo.merge(a, b, "crossover") is None


def test_notes_carry_metrics(tmp_path):
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    assert repo.note(a) == ""
    repo.annotate(a, "seed 0: evaluated val_bpb=1.23")
    repo.annotate(a, "seed 1: evaluated val_bpb=1.25")
    assert repo.note(a).splitlines() == [
        "seed 0: evaluated val_bpb=1.23",
        "",
        "seed 1: evaluated val_bpb=1.25",
    ]


def test_worktree_is_removed_and_commit_stays(tmp_path):
    repo = make_repo(tmp_path / "run")
    a = repo.commit_candidate(repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "a")
    with repo.worktree(a) as wt:
        assert "DIM = 24" in (wt / "train.py").read_text()
        (wt / "junk.bin").write_bytes(b"x" * 10)  # untracked leftovers do not block removal
        assert repo.list_worktrees() == [wt]
    assert not wt.exists() and repo.list_worktrees() == []
    assert repo.resolve(a) == a


def test_unknown_commit_is_a_clear_error(tmp_path):
    repo = make_repo(tmp_path / "run")
    with pytest.raises(RepoError, match="unknown commit"):
        repo.commit_candidate("deadbeef", TINY_TRAIN, "x")
