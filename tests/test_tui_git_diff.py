"""A candidate's diff against its parent, read from a real experiment repository."""

from __future__ import annotations

import subprocess

from arena.repo import ExperimentRepo
from tui.git_diff import diff_to_parent

TRAIN_PY = "DEPTH = 4\n" + "".join(f"X{i} = {i}\n" for i in range(8)) + "N_EMBD = 128\n"


def _status(run_dir) -> str:
    return subprocess.run(["git", "-C", str(run_dir), "status", "--porcelain", "--ignored"],
                          capture_output=True, text=True, check=True).stdout


def test_diff_against_parent_root_crossover_and_unknown(tmp_path):
    repo = ExperimentRepo.create(tmp_path / "run", TRAIN_PY, "# harness\n", "+++\n+++\n")
    root = repo.root_commit
    a = repo.commit_candidate(root, TRAIN_PY.replace("4", "6"), "a: deeper")
    b = repo.commit_candidate(root, TRAIN_PY.replace("128", "192"), "b: wider")
    both = repo.merge(a, b, "a x b")
    assert both is not None
    before = _status(repo.run_dir)

    diff = diff_to_parent(repo.run_dir, a)
    assert "-DEPTH = 4" in diff and "+DEPTH = 6" in diff and "N_EMBD = 192" not in diff
    assert "root commit" in diff_to_parent(repo.run_dir, root)
    merged = diff_to_parent(repo.run_dir, both)  # a crossover: against its first parent
    assert "+N_EMBD = 192" in merged and "DEPTH" not in merged  # a's own change is not repeated
    assert "cannot find commit" in diff_to_parent(repo.run_dir, "0" * 40)
    assert "no commit" in diff_to_parent(repo.run_dir, None)
    assert "no git repository" in diff_to_parent(tmp_path, a)
    assert _status(repo.run_dir) == before  # read-only
