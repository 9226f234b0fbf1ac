"""A candidate's change against its parent, read from the run directory's git history.

Flow: the details screen asks for `diff_to_parent(run_dir, commit)` in a worker thread.
Every candidate is a commit whose first parent is its parent candidate's commit
(docs/contracts.md), so `git diff <commit>^ <commit> -- train.py` is its edit.

What it does not do: write. It runs read-only git plumbing with `GIT_OPTIONAL_LOCKS=0`
so git does not even refresh its index.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TIMEOUT_S = 10


def _git(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", "-C", str(run_dir), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env, check=False)


def diff_to_parent(run_dir: str | os.PathLike, commit: str | None, path: str = "train.py") -> str:
    """The unified diff of `path` between `commit`'s first parent and `commit`, or a
    one-line explanation of why there is none."""
    if not commit:
        return "(no commit: the proposal was not turned into a candidate)"
    run_dir = Path(run_dir)
    if not (run_dir / ".git").exists():
        return f"(no git repository in {run_dir})"
    try:
        parents = _git(run_dir, "rev-list", "--parents", "-n", "1", commit)
        if parents.returncode != 0:
            return f"(git cannot find commit {commit[:12]}: {parents.stderr.strip().splitlines()[-1:]})"
        shas = parents.stdout.split()
        if len(shas) < 2:
            return "(the root commit: no parent to compare with)"
        out = _git(run_dir, "diff", "--no-color", "--no-ext-diff", shas[1], shas[0], "--", path)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(git diff failed: {exc})"
    if out.returncode != 0:
        return f"(git diff failed: {out.stderr.strip()})"
    return out.stdout or "(no change to train.py against the parent)"
