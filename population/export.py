"""Lineage export: the best (or any) candidate as git patches or as a plain train.py.

Flow: reads the store (which candidate is best, which commit it is) and the run's git
repository (`arena.repo.ExperimentRepo`); writes a `git format-patch` series (one patch
per ancestor, root excluded), a single patch from the root, or the file itself.

What it does not do: change the run. It opens the store read-only and only reads git.
"""

from __future__ import annotations

import logging
from pathlib import Path

import git

from arena.repo import ExperimentRepo
from population.store import Store, StoreError

log = logging.getLogger(__name__)

FORMATS = ("series", "patch", "file")


class ExportError(Exception):
    """The export cannot be made (unknown candidate, not measured, bad format)."""


def best_candidate(store: Store) -> str:
    """The member of the newest archive version with the lowest mean val_bpb."""
    gens = store.generations()
    if not gens:
        raise ExportError("no generation has finished yet: nothing to export")
    rows = gens[-1].archive
    return min(rows, key=lambda r: (r["val_bpb"], r["peak_mem_mb"], r["candidate_id"]))["candidate_id"]


def export(run_dir: str | Path, store: Store, candidate_id: str | None, fmt: str,
           out: str | Path | None = None) -> tuple[str, str | Path]:
    """Export `candidate_id` (None: the best). Returns (candidate id, what was written:
    the text for patch/file when `out` is None, else the path written)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    cid = candidate_id or best_candidate(store)
    try:
        cand = store.candidate(cid)
    except StoreError as exc:
        raise ExportError(str(exc)) from None
    if not cand.commit:
        raise ExportError(f"candidate {cid} has no commit (status {cand.status.value}): nothing to export")
    repo = ExperimentRepo.open(run_dir)
    root = repo.root_commit
    if fmt == "file":
        text = repo.read_file(cand.commit, "train.py")
        if out is None:
            return cid, text
        Path(out).write_text(text)
        return cid, Path(out)
    g = git.Repo(Path(run_dir)).git
    if fmt == "patch":
        header = (f"From: evolve\nSubject: [PATCH] {cid}: {cand.persona}: {cand.hypothesis}\n\n"
                  f"Lineage: {' -> '.join(_lineage_ids(store, cid))}\n---\n")
        text = header + g.diff(root, cand.commit, "--", "train.py") + "\n"
        if out is None:
            return cid, text
        Path(out).write_text(text)
        return cid, Path(out)
    out_dir = Path(out) if out is not None else Path(f"export-{cid}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cand.commit == root:
        raise ExportError(f"{cid} is the root commit: a series would be empty")
    g.format_patch("-o", str(out_dir.resolve()), f"{root}..{cand.commit}")
    return cid, out_dir


def _lineage_ids(store: Store, cid: str) -> list[str]:
    chain = []
    cur: str | None = cid
    while cur is not None:
        chain.append(cur)
        cur = store.candidate(cur).parent_id
    return list(reversed(chain))
