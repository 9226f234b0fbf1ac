"""Research memory: what the whole run tried and what it measured, as a compact digest.

Flow: store (candidates, evaluations, events) + git (each candidate's train.py) ->
`trials` (one `Trial` per child: what it changed against its parent, the paired effect
on val_bpb and memory over the seeds both ran, and its fate) -> `digest`: the trials
grouped by the idea they share (the constants they moved and which way, or the
definitions they edited) and ranked, one line a group, e.g.

    - LEARNING_RATE up: 3 tries (2 on this lineage), all worse; 0 confirmed, 2 rejected,
      1 crashed; d val_bpb +0.031 +- 0.012 (5 paired seeds), d mem +0 MB; crashed: nan loss

The digest goes into every proposal's prompt (agents.prompts trims it from the end) and
`evolve report` prints it. Groups on the parent's own lineage come first, then the
most tried. A change is always measured against the candidate's own parent on the same
seeds and the same device type (d = child - parent; negative val_bpb is better).

It reads only facts as of one archive version when asked (`as_of`), so a resumed run
builds the same prompt. It decides nothing (confirmation is population.scoring's and
the loop's business) and writes nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents import rubric
from agents.edits import EditError
from arena.repo import RepoError
from population.store import Candidate, Store

FAILED = frozenset({"crashed", "timeout", "oom", "nan", "contract_error", "causality_violation"})
REFUSED = frozenset({"guard_refused", "invalid_edit"})
OWN_PURPOSES = ("root", "initial", "race", "rescore")


@dataclass(frozen=True)
class Trial:
    """One child as the memory sees it."""

    candidate_id: str
    parent_id: str
    persona: str
    hypothesis: str
    status: str
    why: str  # the last line of its message (crash, refusal, decision)
    idea: str  # the group key: "LEARNING_RATE up", "DEPTH up + MODEL_DIM down", "edit MLP"
    d_val: float | None  # mean paired difference child - parent
    d_val_se: float | None
    d_mem: float | None
    n_seeds: int


def _last_line(text: str, n: int = 90) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    s = lines[-1] if lines else ""
    return s if len(s) <= n else s[: n - 3] + "..."


def idea_of(parent_py: str, child_py: str) -> str:
    """The group key of an edit: constants with their direction, then edited definitions."""
    consts, defs = rubric.changes(parent_py, child_py)
    parts = [f"{n} {'up' if d > 0 else 'down' if d < 0 else 'changed'}" for n, d in sorted(consts.items())]
    parts += [f"edit {d}" for d in defs]
    return " + ".join(parts) if parts else "no visible change"


def _hypothesis_idea(h: str) -> str:
    words = " ".join(h.split()).lower()
    return f'"{words[:60]}"' if words else "(no hypothesis)"


def _paired(store: Store, child: str, parent: str, max_generation: int | None) -> tuple[list[float], list[float]]:
    where = "status = 'evaluated' AND val_bpb IS NOT NULL"
    params: list = []
    if max_generation is not None:
        where += " AND generation <= ?"
        params.append(max_generation)

    def runs(cid: str, own: bool) -> dict[tuple[int, str], tuple[float, float]]:
        sql = f"SELECT seed, device_type, val_bpb, peak_mem_mb, purpose FROM evaluations WHERE candidate_id = ? AND {where}"
        out = {}
        for r in store.db.query(sql, [cid, *params]):
            if own and r["purpose"] not in OWN_PURPOSES:
                continue
            out[(r["seed"], r["device_type"])] = (float(r["val_bpb"]), float(r["peak_mem_mb"] or 0.0))
        return out

    mine, theirs = runs(child, True), runs(parent, False)
    keys = sorted(set(mine) & set(theirs))
    return [mine[k][0] - theirs[k][0] for k in keys], [mine[k][1] - theirs[k][1] for k in keys]


def trials(store: Store, read_train_py: Callable[[str], str] | None = None,
           as_of: int | None = None) -> list[Trial]:
    """Every child (not the root), oldest first, as of archive version `as_of` (None: now).
    Without `read_train_py` (commit -> train.py) a trial's idea is its hypothesis."""
    statuses: dict[str, str] | None = None
    if as_of is not None:
        recs = [g for g in store.generations() if g.generation == as_of]
        statuses = recs[0].statuses if recs else {}
    files: dict[str, str] = {}

    def text(c: Candidate) -> str | None:
        if read_train_py is None or not c.commit:
            return None
        if c.commit not in files:
            try:
                files[c.commit] = read_train_py(c.commit)
            except RepoError:  # a commit git cannot read: the idea comes from the hypothesis
                files[c.commit] = ""
        return files[c.commit] or None

    cands = {c.id: c for c in store.candidates()}
    out = []
    for c in cands.values():
        if c.parent_id is None:
            continue
        status = c.status.value if statuses is None else statuses.get(c.id)
        if status is None:
            continue
        parent = cands.get(c.parent_id)
        idea = _hypothesis_idea(c.hypothesis)
        child_py, parent_py = text(c), (text(parent) if parent else None)
        if child_py and parent_py:
            try:
                idea = idea_of(parent_py, child_py)
            except EditError:
                pass  # a child that does not parse keeps its hypothesis as the idea
        d_val, d_mem = _paired(store, c.id, c.parent_id, as_of)
        n = len(d_val)
        se = statistics.stdev(d_val) / math.sqrt(n) if n > 1 else None
        out.append(Trial(c.id, c.parent_id, c.persona, c.hypothesis, status, _last_line(c.message), idea,
                         statistics.fmean(d_val) if n else None, se,
                         statistics.fmean(d_mem) if n else None, n))
    return out


def _ancestors(store: Store, cid: str | None) -> set[str]:
    cands = {c.id: c for c in store.candidates()}
    out: set[str] = set()
    while cid is not None and cid not in out and cid in cands:
        out.add(cid)
        cid = cands[cid].parent_id
    return out


def _group_line(idea: str, ts: list[Trial], on_lineage: int, noise: float | None) -> str:
    counts: dict[str, int] = {}
    for t in ts:
        kind = ("crashed" if t.status in FAILED else "refused" if t.status in REFUSED
                else t.status if t.status in ("confirmed", "rejected") else "pending")
        counts[kind] = counts.get(kind, 0) + 1
    measured = [t for t in ts if t.d_val is not None]
    tries = f"{len(ts)} tr{'y' if len(ts) == 1 else 'ies'}"
    if on_lineage:
        tries += f" ({on_lineage} on this lineage)"
    verdict = ""
    if measured:
        margin = 2 * noise if noise else 0.0
        worse = sum(t.d_val > margin for t in measured)  # type: ignore[operator]
        better = sum(t.d_val < -margin for t in measured)  # type: ignore[operator]
        n = len(measured)
        if worse == n:
            verdict = f", all {n} measured worse" if n > 1 else ", measured worse"
        elif better == n:
            verdict = f", all {n} measured better" if n > 1 else ", measured better"
        else:
            verdict = f", {better} better / {worse} worse / {n - better - worse} within noise"
    fate = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    line = f"- {idea}: {tries}{verdict}; {fate}"
    if measured:
        seeds = sum(t.n_seeds for t in measured)
        dv = statistics.fmean(t.d_val for t in measured)  # type: ignore[misc]
        spread = ([t.d_val for t in measured] if len(measured) > 1 else [])
        unc = (statistics.stdev(spread) / math.sqrt(len(spread)) if len(spread) > 1
               else measured[0].d_val_se)
        dm = statistics.fmean(t.d_mem for t in measured if t.d_mem is not None)  # type: ignore[misc]
        line += f"; d val_bpb {dv:+.4f}" + (f" +- {unc:.4f}" if unc is not None else "")
        line += f" ({seeds} paired seeds), d mem {dm:+.0f} MB"
    crash = next((t.why for t in reversed(ts) if t.status in FAILED | REFUSED and t.why), "")
    if crash:
        line += f"; last failure: {crash}"
    return line


def digest(store: Store, read_train_py: Callable[[str], str] | None = None, parent_id: str | None = None,
           as_of: int | None = None, max_lines: int = 30) -> str:
    """The ranked digest (module doc); '' before any child. `parent_id` marks which
    tries were made on that candidate's lineage (its ancestors and itself)."""
    ts = trials(store, read_train_py, as_of)
    if not ts:
        return ""
    lineage = _ancestors(store, parent_id) if parent_id else set()
    groups: dict[str, list[Trial]] = {}
    for t in ts:
        groups.setdefault(t.idea, []).append(t)
    floor = store.get_meta("noise_floor") or {}
    noise = floor.get("val_std") if isinstance(floor, dict) else None

    def rank(item: tuple[str, list[Trial]]) -> tuple:
        idea, g = item
        on = sum(t.parent_id in lineage for t in g)
        measured = [t.d_val for t in g if t.d_val is not None]
        best = min(measured) if measured else math.inf
        return (-on, -len(g), best, idea)

    ranked = sorted(groups.items(), key=rank)
    lines = [_group_line(idea, g, sum(t.parent_id in lineage for t in g), noise) for idea, g in ranked]
    head = (f"{len(ts)} children so far, {len(groups)} distinct ideas; d = child - its parent on the same "
            "seeds (negative val_bpb is better)")
    if noise:
        head += f"; changes within +-{2 * noise:.4f} are noise"
    saved = _novelty_saved(store)
    if saved:
        head += f"; the novelty gate refused {saved} repeat(s) before any training"
    shown = lines[:max_lines]
    if len(lines) > max_lines:
        shown.append(f"- ... {len(lines) - max_lines} more ideas, each tried less")
    return "\n".join([head, *shown])


def _novelty_saved(store: Store) -> int:
    rows = list(store.db.query("SELECT COUNT(*) AS n FROM events WHERE kind = 'novelty_refused'"))
    return int(rows[0]["n"]) if rows else 0


def for_run(run_dir: str | Path, store: Store) -> str:
    """The digest of a whole run directory (for `evolve report`): reads each candidate's
    train.py from the run's git repository."""
    from arena.repo import ExperimentRepo

    repo = ExperimentRepo.open(Path(run_dir))
    return digest(store, lambda commit: repo.read_file(commit, "train.py"))
