"""The experiment repository: every candidate is a git commit, lineage is git history.

Flow: the population loop asks for `commit_candidate(parent, train_py, message)` (or a
`merge` of two parents for a crossover), the arena checks the commit with
`arena.guards`, checks it out in a temporary worktree (`worktree(commit)`), runs it, and
records the measured metrics as a git note (`annotate`). Commits are never rewritten
or deleted; worktrees are removed after each run.

Commits are written with git plumbing into a private index file, so several threads
can create candidates at once without touching the run directory's checkout. Each
candidate commit is kept alive by a ref `refs/evolve/<sha>`.

What it does not do: decide which candidate runs, check the content of a commit (that
is `arena.guards`), or run anything.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import git

from arena.errors import EvolveError

log = logging.getLogger(__name__)

ROOT_FILES = ("train.py", "prepare.py", "program.md")
NOTES_REF = "refs/notes/evolve"
# Everything the run directory holds besides the three tracked files.
EXCLUDES = ("/worktrees/", "/logs/", "/out/", "/cache/", "*.sqlite", "*.sqlite-*", "*.db", "*.db-*")
AUTHOR_ENV = {
    "GIT_AUTHOR_NAME": "evolve",
    "GIT_AUTHOR_EMAIL": "evolve@localhost",
    "GIT_COMMITTER_NAME": "evolve",
    "GIT_COMMITTER_EMAIL": "evolve@localhost",
}


def _locked(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class RepoError(EvolveError, RuntimeError):
    """A git operation on the experiment repository failed (message says which)."""


class ExperimentRepo:
    """A run directory's git repository. Create with `create`, reopen with `open`."""

    def __init__(self, run_dir: Path, repo: git.Repo) -> None:
        self.run_dir = Path(run_dir)
        self._repo = repo
        # GitPython's object database (a persistent `git cat-file --batch`) and
        # worktree metadata are shared state: one thread at a time.
        self._lock = threading.RLock()

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls, run_dir: str | Path, train_py: str, prepare_py: str, program_md: str
    ) -> ExperimentRepo:
        """Initialise `run_dir` as a git repository whose root commit holds the three
        files. Refuses a directory that already holds a repository."""
        run_dir = Path(run_dir).resolve()
        if (run_dir / ".git").exists():
            raise RepoError(f"{run_dir} already holds a git repository; use ExperimentRepo.open")
        run_dir.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(run_dir, initial_branch="main")
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "evolve")
            cw.set_value("user", "email", "evolve@localhost")
            cw.set_value("gc", "auto", "0")
        (run_dir / ".git" / "info").mkdir(exist_ok=True)
        (run_dir / ".git" / "info" / "exclude").write_text("\n".join(EXCLUDES) + "\n")
        for name, text in zip(ROOT_FILES, (train_py, prepare_py, program_md)):
            (run_dir / name).write_text(text)
        repo.index.add(list(ROOT_FILES))
        repo.index.commit("root: template train.py, harness prepare.py, program.md")
        self = cls(run_dir, repo)
        self._keep(self.root_commit)
        log.info("created experiment repository %s (root %s)", run_dir, self.root_commit[:10])
        return self

    @classmethod
    def open(cls, run_dir: str | Path) -> ExperimentRepo:
        run_dir = Path(run_dir).resolve()
        try:
            repo = git.Repo(run_dir)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise RepoError(f"{run_dir} is not an experiment repository: {exc}") from exc
        return cls(run_dir, repo)

    # ---- reading -------------------------------------------------------------------

    @property
    @_locked
    def root_commit(self) -> str:
        roots = self._repo.git.rev_list("--max-parents=0", "main").split()
        if len(roots) != 1:
            raise RepoError(f"expected one root commit on main, found {len(roots)}")
        return roots[0]

    @_locked
    def resolve(self, commit: str) -> str:
        """Full sha of `commit`; RepoError when it does not name a commit."""
        try:
            return self._repo.git.rev_parse("--verify", "--quiet", f"{commit}^{{commit}}")
        except git.GitCommandError as exc:
            raise RepoError(f"unknown commit {commit!r}") from exc

    @_locked
    def read_file(self, commit: str, path: str) -> str:
        try:
            return self._repo.git.show(f"{commit}:{path}", strip_newline_in_stdout=False)
        except git.GitCommandError as exc:
            raise RepoError(f"{path} not found in commit {commit[:10]}") from exc

    @_locked
    def read_bytes(self, commit: str, path: str) -> bytes:
        blob = self._repo.commit(commit).tree / path
        return blob.data_stream.read()

    @_locked
    def parents(self, commit: str) -> list[str]:
        return [p.hexsha for p in self._repo.commit(commit).parents]

    @_locked
    def changed_files(self, commit: str) -> dict[str, list[str]]:
        """Paths that differ between `commit` and each of its parents (key: parent sha)."""
        out: dict[str, list[str]] = {}
        for parent in self.parents(commit):
            names = self._repo.git.diff("--name-only", "--no-renames", parent, commit)
            out[parent] = [n for n in names.splitlines() if n]
        return out

    @_locked
    def tree_files(self, commit: str) -> list[str]:
        return [n for n in self._repo.git.ls_tree("-r", "--name-only", commit).splitlines() if n]

    @_locked
    def message(self, commit: str) -> str:
        return str(self._repo.commit(commit).message)

    @_locked
    def lineage(self, commit: str) -> list[str]:
        """Ancestors of `commit`, newest first, the commit itself included (all parents
        of a merge are followed)."""
        return self._repo.git.rev_list("--topo-order", commit).split()

    # ---- writing -------------------------------------------------------------------

    @_locked
    def commit_candidate(self, parent: str, train_py: str, message: str) -> str:
        """A new commit whose only parent is `parent` and whose train.py is `train_py`;
        every other file is the parent's. Returns the new sha."""
        parent = self.resolve(parent)
        return self._commit_tree([parent], {"train.py": train_py}, message)

    @_locked
    def commit_files(self, parents: list[str], files: dict[str, str], message: str) -> str:
        """Low-level: a commit with `files` replaced on top of the first parent's tree.
        Used by tests and the guards' fixtures to build arbitrary diffs."""
        return self._commit_tree([self.resolve(p) for p in parents], files, message)

    @_locked
    def merge(self, commit_a: str, commit_b: str, message: str) -> str | None:
        """A crossover: a merge commit with parents `commit_a` and `commit_b`, or None
        when git cannot merge them without conflicts."""
        a, b = self.resolve(commit_a), self.resolve(commit_b)
        try:
            tree = self._repo.git.merge_tree("--write-tree", a, b).splitlines()[0].strip()
        except git.GitCommandError as exc:
            if exc.status == 1:  # conflicts: not a clean merge
                log.info("merge of %s and %s is not clean", a[:10], b[:10])
                return None
            raise RepoError(f"git merge-tree failed: {exc.stderr.strip()}") from exc
        sha = self._repo.git.commit_tree(tree, "-p", a, "-p", b, "-m", message, env=AUTHOR_ENV)
        self._keep(sha)
        return sha

    @_locked
    def annotate(self, commit: str, text: str) -> None:
        """Attach (or append to) the measured metrics as a git note on `commit`."""
        self._repo.git.notes("--ref", NOTES_REF, "append", "-m", text, commit, env=AUTHOR_ENV)

    @_locked
    def note(self, commit: str) -> str:
        try:
            return self._repo.git.notes("--ref", NOTES_REF, "show", commit)
        except git.GitCommandError:
            return ""

    @_locked
    def _commit_tree(self, parents: list[str], files: dict[str, str], message: str) -> str:
        with tempfile.TemporaryDirectory(prefix="evolve-index-") as tmp:
            env = dict(AUTHOR_ENV, GIT_INDEX_FILE=str(Path(tmp) / "index"))
            g = self._repo.git
            g.read_tree(parents[0], env=env)
            for path, text in files.items():
                blob = Path(tmp) / "blob"
                blob.write_text(text)
                sha = g.hash_object("-w", str(blob))
                g.update_index("--add", "--cacheinfo", f"100644,{sha},{path}", env=env)
            tree = g.write_tree(env=env)
        args: list[str] = [tree]
        for p in parents:
            args += ["-p", p]
        sha = self._repo.git.commit_tree(*args, "-m", message, env=AUTHOR_ENV)
        self._keep(sha)
        return sha

    @_locked
    def _keep(self, sha: str) -> None:
        self._repo.git.update_ref(f"refs/evolve/{sha}", sha)

    # ---- worktrees -----------------------------------------------------------------

    @property
    def worktrees_dir(self) -> Path:
        return self.run_dir / "worktrees"

    def add_worktree(self, commit: str, name: str | None = None) -> Path:
        """Check `commit` out (detached) in a fresh directory under worktrees/."""
        commit = self.resolve(commit)
        path = self.worktrees_dir / (name or f"{commit[:10]}-{uuid.uuid4().hex[:8]}")
        with self._lock:
            self.worktrees_dir.mkdir(exist_ok=True)
            self._repo.git.worktree("add", "--detach", str(path), commit)
        return path

    def remove_worktree(self, path: Path) -> None:
        """Remove a worktree whatever the candidate left in it; the commit stays."""
        with self._lock:
            try:
                self._repo.git.worktree("remove", "--force", "--force", str(path))
            except git.GitCommandError as exc:
                log.warning("git worktree remove %s failed (%s); deleting it", path, exc.stderr)
                shutil.rmtree(path, ignore_errors=True)
                self._repo.git.worktree("prune")

    @contextmanager
    def worktree(self, commit: str, name: str | None = None) -> Iterator[Path]:
        path = self.add_worktree(commit, name)
        try:
            yield path
        finally:
            self.remove_worktree(path)

    @_locked
    def list_worktrees(self) -> list[Path]:
        out = self._repo.git.worktree("list", "--porcelain")
        paths = [
            Path(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("worktree ")
        ]
        return [p for p in paths if p.resolve() != self.run_dir]
