"""Helpers for tests of exported series: a fresh clone of the project, `git am`, and a
byte comparison with the candidate's train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from population.store import Store, store_path

ROOT = Path(__file__).resolve().parent.parent

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}


def evolve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "population.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=True,
                          env=dict(os.environ, **GIT_ENV)).stdout


def project_at_run_start(run_dir: Path, dest: Path) -> Path:
    """A clone of the project whose train_template.py is what the run started from: a
    fresh clone of this checkout when it is a git repository, with the run's root
    train.py committed when the checkout's template has moved on since."""
    root_py = git(run_dir, "show", f"{git(run_dir, 'rev-list', '--max-parents=0', 'HEAD').strip()}:train.py")
    if (ROOT / ".git").exists():
        git(dest.parent, "clone", "-q", "--depth", "1", f"file://{ROOT}", dest.name)
    else:
        dest.mkdir()
        git(dest, "init", "-q")
    if not (dest / "train_template.py").exists() or (dest / "train_template.py").read_text() != root_py:
        (dest / "train_template.py").write_text(root_py)
        git(dest, "add", "train_template.py")
        git(dest, "commit", "-q", "-m", "the template the run started from")
    return dest


def check_series_applies(run_dir: Path, cid: str, tmp_path: Path) -> str:
    """Export `cid` as a series to stdout, `git am` it on a fresh clone, compare bytes."""
    before = git(ROOT, "status", "--porcelain", "--ignored") if (ROOT / ".git").exists() else ""
    r = evolve("export", "--candidate", cid, "--format", "series", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    after = git(ROOT, "status", "--porcelain", "--ignored") if (ROOT / ".git").exists() else ""
    assert before == after  # nothing written into the checkout
    clone = project_at_run_start(run_dir, tmp_path / "clone")
    git(clone, "am", "-q", stdin=r.stdout)
    want = git(run_dir, "show", f"{_commit(run_dir, cid)}:train.py")
    assert (clone / "train_template.py").read_bytes() == want.encode()
    assert git(clone, "log", "-1", "--format=%ae") == "evolve@localhost\n"
    return r.stdout


def _commit(run_dir: Path, cid: str) -> str:
    with Store.open(store_path(run_dir), readonly=True) as store:
        return store.candidate(cid).commit or ""
