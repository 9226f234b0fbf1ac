"""What the TUI shows, read in one pass from a run's store: a frozen `Snapshot`.

Flow: the app's refresh worker calls `read_snapshot(run_dir)` every few seconds; it
opens the store read-only (`Store.open(..., readonly=True)`), reads candidates,
evaluations, events, sessions, costs and the last archive version, closes it, and hands
the widgets plain records. The statistics are the population's own:
`population.noise.noise_floor` summarises a candidate's seeds (mean and standard
deviation) and gives the provisional noise floor before the loop has stored one;
`population.archive.ParetoArchive` rebuilds the stored archive to give each member its
hypervolume contribution and crowding distance.

What it does not do: write anything, decide anything, or touch Textual. A missing or
unreadable store raises `TUIError` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from arena.errors import EvolveError
from population.archive import ParetoArchive, Point
from population.noise import NoiseFloor, noise_floor
from population.report import pid_alive
from population.scoring import Scorer
from population.store import Evaluation, Store, StoreError, store_path

log = logging.getLogger(__name__)

ROOT_ID = "root"


class TUIError(EvolveError):
    """The run directory cannot be shown (no store, not a store, another schema)."""


@dataclass(frozen=True)
class SeedSummary:
    """A candidate's score so far (population.scoring): its val_bpb estimate, the spread
    of its own runs, its mean memory, over its successful runs on the primary device."""

    n_seeds: int
    val_mean: float  # the val_bpb estimate (population.scoring.Scorer.score)
    val_bpb_std: float | None  # spread of its own runs; None with a single seed
    mem_mean: float
    gap: float | None = None  # val-test gap (population.scoring.Scorer.gap)


@dataclass(frozen=True)
class CandidateRow:
    id: str
    generation: int
    idx: int
    persona: str
    status: str
    parent_id: str | None
    second_parent_id: str | None
    commit: str | None
    model: str
    hypothesis: str
    message: str
    summary: SeedSummary | None
    running_seeds: tuple[int, ...]
    cost_usd: float


@dataclass(frozen=True)
class ArchiveRow:
    candidate_id: str
    val_bpb: float
    val_bpb_std: float
    n_seeds: int
    peak_mem_mb: float
    hv_contribution: float | None
    crowding: float | None
    persona: str
    hypothesis: str


@dataclass(frozen=True)
class EventRow:
    id: int
    created_at: float
    generation: int | None
    candidate_id: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    session: str  # "running (pid 12)", "stopped (done)", "killed", "no session"
    live: bool
    generation: int  # the newest generation any candidate belongs to (lookahead included)
    archive_version: int  # the newest finished generation, -1 before the root is measured
    in_progress: int | None  # the generation being measured, None when all are finished
    counts: dict[str, int]
    n_candidates: int
    evaluations_finished: int
    evaluations_running: int
    cost_usd: float
    elapsed_s: float
    noise: NoiseFloor | None
    noise_provisional: bool  # computed here from the root's runs, not yet stored by the loop
    device_type: str | None
    hypervolume: float | None
    generations_planned: int | None = None  # the session's stop.generations
    max_cost_usd: float | None = None  # the session's cost ceiling


@dataclass(frozen=True)
class Snapshot:
    status: RunStatus
    candidates: tuple[CandidateRow, ...]
    archive: tuple[ArchiveRow, ...]
    events: tuple[EventRow, ...]
    evaluations: dict[str, tuple[Evaluation, ...]] = field(default_factory=dict)
    read_at: float = 0.0

    def candidate(self, cid: str) -> CandidateRow | None:
        return next((c for c in self.candidates if c.id == cid), None)


def open_store(run_dir: str | os.PathLike) -> Store:
    """The run's store, read-only, or a `TUIError` saying in one line what is wrong."""
    path = store_path(run_dir)
    if not Path(run_dir).is_dir():
        raise TUIError(f"no run directory at {run_dir}; pass the directory evolve was run with (--run-dir)")
    if not path.is_file():
        raise TUIError(f"no store at {path}; is {run_dir} a run directory? start one with evolve --generations N")
    try:
        return Store.open(path, readonly=True)  # reads the schema: a foreign file fails here
    except StoreError as exc:
        raise TUIError(str(exc)) from None
    except sqlite3.Error as exc:
        raise TUIError(f"cannot read the store {path}: {exc}") from None


def read_snapshot(run_dir: str | os.PathLike, events_limit: int = 200) -> Snapshot:
    """Everything the TUI shows, read from the store in one go (read-only)."""
    store = open_store(run_dir)
    try:
        return _read(store, Path(run_dir), events_limit)
    except sqlite3.Error as exc:
        raise TUIError(f"cannot read the store {store.path}: {exc}") from None
    finally:
        store.close()


def summarize(scorer: Scorer, cid: str) -> SeedSummary | None:
    """A candidate's score over everything measured so far: the generation cut is the
    newest generation any run belongs to (once a run has ended, the last archive
    version, so the rows agree with the archive's)."""
    if cid not in scorer.cands:
        return None
    live = scorer.live_version()
    p = scorer.score(cid, live)
    if p is None:
        return None
    return SeedSummary(p.n_seeds, p.val_bpb, p.val_bpb_std if p.n_seeds > 1 else None, p.peak_mem_mb,
                       scorer.gap(cid, live))


def _read(store: Store, run_dir: Path, events_limit: int) -> Snapshot:
    now = time.time()
    store.db.execute("BEGIN")  # one read transaction: a consistent view while the loop writes
    try:
        cands = store.candidates()
        evals = store.evaluations(include_unfinished=True)
        events = store.events(events_limit)
        sessions = store.sessions()
        gens = store.generations()
        costs = store.cost_by_candidate()
        total_cost = store.total_cost()
        device_type = store.get_meta("device_type")
        stored_floor = store.get_meta("noise_floor")
        # epsilon is stored per archive version (re-estimated as the run goes); stores
        # written before that keep one under meta
        eps = gens[-1].summary.get("epsilon") if gens else None
        eps = eps or store.get_meta("epsilon")
        ref = store.get_meta("reference")
        scorer = Scorer.from_store(store)
    finally:
        store.db.execute("ROLLBACK")

    by_cand: dict[str, list[Evaluation]] = {}
    for e in evals:
        by_cand.setdefault(e.candidate_id, []).append(e)

    rows = []
    for c in cands:
        mine = by_cand.get(c.id, [])
        rows.append(CandidateRow(
            id=c.id, generation=c.generation, idx=c.idx, persona=c.persona, status=c.status.value,
            parent_id=c.parent_id, second_parent_id=c.second_parent_id, commit=c.commit, model=c.model,
            hypothesis=c.hypothesis, message=c.message, summary=summarize(scorer, c.id),
            running_seeds=tuple(sorted(e.seed for e in mine if e.status == "running")),
            cost_usd=costs.get(c.id, 0.0),
        ))

    noise, provisional = _noise(stored_floor, by_cand.get(ROOT_ID, []), device_type)
    personas = {c.id: c for c in cands}
    archive_rows: list[ArchiveRow] = []
    hv = None
    if gens:
        members = [Point.from_row(r) for r in gens[-1].archive]
        contrib: dict[str, float] = {}
        crowd: dict[str, float] = {}
        hv = gens[-1].hypervolume
        if eps and ref and members:
            arch = ParetoArchive(eps=(float(eps[0]), float(eps[1])), ref=(float(ref[0]), float(ref[1])),
                                 members=members)
            contrib, crowd = arch.contributions(), arch.crowding()
        for p in sorted(members, key=lambda p: (p.val_bpb, p.peak_mem_mb, p.candidate_id)):
            c = personas.get(p.candidate_id)
            archive_rows.append(ArchiveRow(
                candidate_id=p.candidate_id, val_bpb=p.val_bpb, val_bpb_std=p.val_bpb_std, n_seeds=p.n_seeds,
                peak_mem_mb=p.peak_mem_mb, hv_contribution=contrib.get(p.candidate_id),
                crowding=crowd.get(p.candidate_id), persona=c.persona if c else "?",
                hypothesis=c.hypothesis if c else "",
            ))

    counts: dict[str, int] = {}
    for c in cands:
        counts[c.status.value] = counts.get(c.status.value, 0) + 1
    session, live = _session_state(sessions)
    started = sessions[0]["started_at"] if sessions else min((c.created_at for c in cands), default=None)
    if started is None:
        elapsed = 0.0
    elif live:
        elapsed = now - started
    else:
        last = [s["ended_at"] for s in sessions if s["ended_at"]]
        last += [e.finished_at or e.started_at for e in evals]
        last += [c.updated_at for c in cands] + [e["created_at"] for e in events]
        elapsed = max(last, default=started) - started

    version = gens[-1].generation if gens else -1
    config = _session_config(sessions)
    status = RunStatus(
        run_dir=run_dir, session=session, live=live,
        generation=max((c.generation for c in cands), default=0),
        archive_version=version,
        in_progress=version + 1 if any(c.generation > version for c in cands) else None,
        counts=counts, n_candidates=len(cands),
        evaluations_finished=sum(1 for e in evals if e.finished),
        evaluations_running=sum(1 for e in evals if e.status == "running"),
        cost_usd=total_cost, elapsed_s=max(0.0, elapsed), noise=noise, noise_provisional=provisional,
        device_type=device_type, hypervolume=hv,
        generations_planned=_int_or_none(config.get("generations")),
        max_cost_usd=_float_or_none(config.get("max_cost_usd")),
    )
    event_rows = tuple(
        EventRow(e["id"], e["created_at"], e["generation"], e["candidate_id"], e["kind"], e["message"])
        for e in events
    )
    return Snapshot(status, tuple(rows), tuple(archive_rows), event_rows,
                    {k: tuple(v) for k, v in by_cand.items()}, now)


def _noise(stored: dict | None, root_evals: list[Evaluation],
           device_type: str | None) -> tuple[NoiseFloor | None, bool]:
    if stored:
        return NoiseFloor(float(stored["val_std"]), float(stored["mem_std"]), int(stored["n_seeds"]),
                          float(stored["val_mean"]), float(stored["mem_mean"])), False
    runs = [(float(e.val_bpb), float(e.peak_mem_mb)) for e in root_evals  # type: ignore[arg-type]
            if e.ok and e.peak_mem_mb is not None and (device_type is None or e.device_type == device_type)]
    if len(runs) < 2:
        return None, False
    return noise_floor(runs), True


def _session_config(sessions: list[dict]) -> dict:
    """The newest session's configuration (what `evolve` was asked to do), {} if unreadable."""
    if not sessions:
        return {}
    try:
        config = json.loads(sessions[-1]["config"] or "{}")
    except ValueError:
        log.warning("session %s has an unreadable config", sessions[-1]["id"])
        return {}
    return config if isinstance(config, dict) else {}


def _int_or_none(x: object) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _float_or_none(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _session_state(sessions: list[dict]) -> tuple[str, bool]:
    if not sessions:
        return "no session yet", False
    last = sessions[-1]
    if last["ended_at"] is not None:
        return f"stopped ({last['outcome'] or 'ended'})", False
    if pid_alive(int(last["pid"])):
        return f"running (pid {last['pid']})", True
    return "killed (continue with evolve --resume)", False


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def candidate_log(run_dir: str | os.PathLike, evals: tuple[Evaluation, ...] | list[Evaluation]) -> Path | None:
    """The log of a candidate's newest run: the path the arena stored with a finished
    evaluation, or, while a run is in flight (its path is stored only when it ends), the
    newest `logs/<id>-s<seed>-*.log` the arena is writing (arena.execute.run_name)."""
    if not evals:
        return None
    newest = max(evals, key=lambda e: e.id)
    if newest.log_path:
        stored = Path(newest.log_path)
        moved = Path(run_dir) / "logs" / stored.name  # the run directory was moved or copied
        return moved if not stored.exists() and moved.exists() else stored
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", newest.candidate_id)[:40]
    found = [p for p in (Path(run_dir) / "logs").glob(f"{safe}-s{newest.seed}-*.log")
             if not p.name.endswith(".eval.log")]
    return max(found, key=_mtime, default=None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed between the glob and now
        return -1.0
