"""Lineage export: the best (or any) candidate as a patch series, one patch, a file or a report.

Flow: reads the store (which candidate is best, its lineage, its scores) and the run's
git repository (`arena.repo.ExperimentRepo`); returns text or writes files.

- `series`: an mbox with one patch per step of the lineage (root excluded, first
  parents; a crossover's merge is the step from its first parent), for `git am` on a
  fresh clone of the project. The run's `train.py` is the project's
  `train_template.py` (every run starts from it), so the patches change
  `train_template.py`: applied with `git am` onto the commit the run started from, they
  reproduce the candidate's train.py byte for byte. Each commit message carries the
  persona, the whole hypothesis and the measured scores (val_bpb, val-test gap).
- `patch`: one patch from the root to the candidate, the same mapping, for `git apply`.
- `file`: the candidate's train.py itself.
- `report`: `population.report.write_report` focused on the candidate's lineage.

Without `--out` the text goes to stdout and nothing is written (a report needs a
directory: the run's `report/`, which the run's git ignores). Text that goes to a
terminal is refused if it holds control characters (a candidate's code may carry
escape sequences): write it to a file with --out.

What it does not do: change the run. It opens the store read-only and only reads git.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import textwrap
from pathlib import Path

import git

from arena.errors import EvolveError
from arena.repo import ExperimentRepo
from population.display import clean, one_line
from population.report import ROOT_ID, lineage, scores, write_report
from population.store import Store, StoreError

log = logging.getLogger(__name__)

FORMATS = ("series", "patch", "file", "report")
RUN_FILE = "train.py"  # the file a run evolves...
PROJECT_FILE = "train_template.py"  # ...is this file of the project
AUTHOR = "evolve <evolve@localhost>"
MAX_SUBJECT = 900  # mail header lines stay under 998 characters


class ExportError(EvolveError):
    """The export cannot be made (unknown candidate, nothing confirmed, bad format)."""


def best_candidate(store: Store) -> str:
    """The member of the newest archive version with the lowest mean val_bpb; an error
    while that is still the root (nothing has been confirmed)."""
    gens = store.generations()
    if not gens:
        raise ExportError("no generation has finished yet: nothing to export (see evolve status)")
    rows = gens[-1].archive
    best = min(rows, key=lambda r: (r["val_bpb"], r["peak_mem_mb"], r["candidate_id"]))["candidate_id"]
    if best == ROOT_ID:
        raise ExportError("no candidate has been confirmed better than the root yet: nothing to export "
                          "(see evolve status; --candidate ID exports any candidate)")
    return best


def map_paths(diff: str) -> str:
    """Rename train.py to train_template.py in a diff's file headers (never in its hunks)."""
    out, in_header = [], False
    for line in diff.splitlines(keepends=True):
        if line.startswith("diff --git "):
            in_header = True
            line = line.replace(f"a/{RUN_FILE} b/{RUN_FILE}", f"a/{PROJECT_FILE} b/{PROJECT_FILE}")
        elif in_header and line.startswith("@@"):
            in_header = False
        elif in_header and line.rstrip("\n") in (f"--- a/{RUN_FILE}", f"+++ b/{RUN_FILE}"):
            line = line.replace(f"/{RUN_FILE}", f"/{PROJECT_FILE}")
        out.append(line)
    return "".join(out)


def _map_stat(stat: str) -> str:
    return "\n".join(f" {PROJECT_FILE} |" + ln.split("|", 1)[1] if ln.startswith(f" {RUN_FILE} ") and "|" in ln
                     else ln for ln in stat.splitlines())


def _message(store: Store, cid: str) -> tuple[str, str]:
    """(subject, body) of a candidate's commit: the whole hypothesis, never shortened."""
    c = store.candidate(cid)
    hypothesis = one_line(c.hypothesis) or "(no hypothesis)"
    subject = f"{cid} ({c.persona}): {hypothesis}"
    if len(subject) > MAX_SUBJECT:
        subject = f"{cid} ({c.persona}): see the hypothesis below"
    sc = scores(store).get(cid)
    measured = ("not measured" if sc is None else
                f"val_bpb {sc.val_bpb:.4f} (sd {sc.val_std:.4f}, {sc.n} seeds), peak memory {sc.peak_mem_mb:.0f} MB"
                + (f", val-test gap {sc.gap:+.4f}" if sc.gap is not None else ""))
    body = "\n".join([
        textwrap.fill(f"Hypothesis: {hypothesis}", 72, break_long_words=False, break_on_hyphens=False),
        "",
        f"Candidate: {cid}",
        f"Parent: {c.parent_id}" + (f" (crossover with {c.second_parent_id})" if c.second_parent_id else ""),
        f"Persona: {c.persona}" + (f" ({one_line(c.model)})" if c.model else ""),
        f"Measured: {measured}",
        f"Decision: {one_line(c.message) or c.status.value}",
    ])
    return subject, body


def series_mbox(run_dir: Path, store: Store, cid: str) -> str:
    cands = {c.id: c for c in store.candidates()}
    chain = [c for c in lineage(cands, cid) if c.commit]
    steps = list(itertools.pairwise(chain))
    if not steps:
        raise ExportError(f"{cid} is the root: a series would be empty")
    g = git.Repo(run_dir).git
    out = []
    for k, (parent, child) in enumerate(steps, 1):
        diff = g.diff(parent.commit, child.commit, "--full-index", "--", RUN_FILE)
        subject, body = _message(store, child.id)
        when = email.utils.formatdate(float(g.log("-1", "--format=%ct", child.commit)), localtime=False)
        stat = g.diff(parent.commit, child.commit, "--stat", "--", RUN_FILE)
        out.append(f"From {child.commit} Mon Sep 17 00:00:00 2001\nFrom: {AUTHOR}\nDate: {when}\n"
                   f"Subject: [PATCH {k}/{len(steps)}] {subject}\n\n{body}\n---\n"
                   f"{_map_stat(stat)}\n\n{map_paths(diff)}\n-- \nevolve\n\n")
    return "".join(out)


def export(run_dir: str | Path, store: Store, candidate_id: str | None, fmt: str,
           out: str | Path | None = None) -> tuple[str, str | Path]:
    """Export `candidate_id` (None: the best). Returns (candidate id, what was made: the
    text when `out` is None, else the path written)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    cid = candidate_id or best_candidate(store)
    try:
        cand = store.candidate(cid)
    except StoreError as exc:
        raise ExportError(f"{exc}; see evolve status for the candidates") from None
    if not cand.commit:
        raise ExportError(f"candidate {cid} has no commit (status {cand.status.value}): nothing to export")
    if fmt == "report":
        files = write_report(store, run_dir, Path(out) if out is not None else run_dir / "report", focus=cid)
        return cid, files.markdown
    repo = ExperimentRepo.open(run_dir)
    if fmt == "file":
        text = repo.read_file(cand.commit, RUN_FILE)
    elif fmt == "series":
        text = series_mbox(run_dir, store, cid)
    else:
        subject, body = _message(store, cid)
        chain = " -> ".join(c.id for c in lineage({c.id: c for c in store.candidates()}, cid))
        diff = git.Repo(run_dir).git.diff(repo.root_commit, cand.commit, "--full-index", "--", RUN_FILE)
        text = f"From: {AUTHOR}\nSubject: [PATCH] {subject}\n\n{body}\nLineage: {chain}\n---\n{map_paths(diff)}\n"
    if out is None:
        return cid, text
    Path(out).write_text(text, encoding="utf-8")
    return cid, Path(out)


def safe_for_terminal(text: str) -> bool:
    """Whether `text` can go to a terminal as it is (no control or escape characters)."""
    return clean(text) == text.replace("\r\n", "\n")
