"""The population's memory: one SQLite file per run, written through sqlite-utils.

Flow: the generation loop (the only writer) records every candidate, every run on every
seed, every LLM call and every notable event here as it happens; the archive, the
bandit, resume, `evolve status/report/export` and the TUI rebuild what they need by
reading it. The file is in WAL mode, so readers (`Store.open(..., readonly=True)`)
never block the writer and see each committed transaction whole.

What it does not do: decide anything. Which candidate is better, which seeds to run and
when a generation ends are the loop's and the statistics' business; the store only keeps
facts and refuses impossible ones (a second writer, a status transition that
`arena.records` does not allow, a finished evaluation recorded twice).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Self

import sqlite_utils

from arena.errors import EvolveError
from arena.records import RunResult, Status, check_transition
from population.migrations import MIGRATIONS

log = logging.getLogger(__name__)

STORE_FILENAME = "evolve.db"

class Purpose(str, Enum):
    """Why the loop asked for a run (stored with the evaluation)."""

    ROOT = "root"  # the root's noise-floor runs
    INITIAL = "initial"  # a child's first seed
    RACE = "race"  # a child's further seeds while it races
    PAIR = "pair"  # a parent's control run, on a child's seed in the same batch
    RESCORE = "rescore"  # an archive member on a fresh seed (its parent gets a control)


CHILD_PURPOSES = frozenset({Purpose.INITIAL, Purpose.RACE})


class StoreError(EvolveError):
    """Base class of the store's named errors (the CLI prints them on one line)."""


class StoreLocked(StoreError):
    """Another process already writes to this store."""


class SchemaMismatch(StoreError):
    """The database file was written by another version of the schema."""


class StoreNotFound(StoreError):
    """No store where one was expected."""


@dataclass(frozen=True)
class Candidate:
    id: str
    generation: int
    idx: int
    parent_id: str | None
    persona: str
    status: Status
    archive_version: int  # the archive state (finished generation) this child saw
    commit: str | None = None
    second_parent_id: str | None = None
    model: str = ""
    hypothesis: str = ""
    edit_format: str = ""
    message: str = ""
    repair_of: str | None = None  # the failed candidate this child was asked to repair
    diff_hash: str = ""  # normalised diff hash from the guard ('' until checked)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Evaluation:
    """One run of one candidate on one seed. `status` is `running` while in flight,
    `interrupted` when the process that started it died, else the run's outcome."""

    id: int
    candidate_id: str
    seed: int
    generation: int  # the generation during which the loop asked for it
    purpose: Purpose
    status: str
    message: str = ""
    val_bpb: float | None = None
    test_bpb: float | None = None
    peak_mem_mb: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    device_type: str = ""
    device_name: str = ""
    log_path: str = ""
    started_at: float = 0.0
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ("running", "interrupted")

    @property
    def ok(self) -> bool:
        return self.status == Status.EVALUATED.value and self.val_bpb is not None


@dataclass(frozen=True)
class GenerationRecord:
    """The archive as it stood when a generation was finalized (an archive version)."""

    generation: int
    finished_at: float
    hypervolume: float
    archive: list[dict]
    statuses: dict[str, str]
    summary: dict


@dataclass(frozen=True)
class LLMCall:
    candidate_id: str | None
    persona: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    error: str
    created_at: float


def store_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STORE_FILENAME


class Store:
    """A run's SQLite store. Open one writer per run (`Store.open(path)`), as many
    readers as you like (`Store.open(path, readonly=True)`). Not thread-safe: the writer
    is used from the loop's thread only."""

    def __init__(self, db: sqlite_utils.Database, path: Path, readonly: bool, lock_fd: int | None):
        self.db = db
        self.path = path
        self.readonly = readonly
        self._lock_fd = lock_fd

    # -- opening -------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False) -> Store:
        path = Path(path)
        if readonly:
            if not path.exists():
                raise StoreNotFound(f"no store at {path}")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            db = sqlite_utils.Database(conn)
            store = cls(db, path, True, None)
            store._check_schema(apply=False)
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(str(path) + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreLocked(
                f"{path} is being written by another evolve process (lock {path}.lock); "
                "stop it first or use a reader"
            ) from None
        try:
            conn = sqlite3.connect(str(path), timeout=30)
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            store = cls(db, path, False, lock_fd)
            store._check_schema(apply=True)
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self, apply: bool) -> None:
        names = [name for name, _ in MIGRATIONS]
        if "schema_migrations" in self.db.table_names():
            applied = [r["name"] for r in self.db.query("SELECT name FROM schema_migrations ORDER BY id")]
        else:
            applied = []
        if applied != names[: len(applied)]:
            raise SchemaMismatch(
                f"{self.path} has schema migrations {applied}, this version knows {names}"
            )
        if len(applied) == len(names):
            return
        if not apply:
            raise SchemaMismatch(f"{self.path} needs migrations {names[len(applied):]}; open it as the writer first")
        with self.db.atomic():
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, applied_at REAL NOT NULL)"
            )
            for name, sql in MIGRATIONS[len(applied):]:
                for statement in _split_sql(sql):
                    self.db.execute(statement)
                self.db["schema_migrations"].insert({"name": name, "applied_at": time.time()})
                log.info("store %s: applied migration %s", self.path, name)

    def schema_version(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM schema_migrations ORDER BY id")]

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError("this store was opened read-only")

    def transaction(self):
        """Context manager: everything inside commits together or not at all."""
        self._writable()
        return self.db.atomic()

    # -- runs (one row per evolve session) and meta ---------------------------------

    def start_session(self, argv: list[str], config: dict) -> int:
        self._writable()
        with self.db.atomic():
            row = self.db["runs"].insert(
                {"started_at": time.time(), "pid": os.getpid(), "argv": json.dumps(argv),
                 "config": json.dumps(config, sort_keys=True)}
            )
        return int(row.last_pk)

    def end_session(self, session_id: int, outcome: str) -> None:
        self._writable()
        with self.db.atomic():
            self.db["runs"].update(session_id, {"ended_at": time.time(), "outcome": outcome})

    def sessions(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM runs ORDER BY id"))

    def set_meta(self, key: str, value: Any) -> None:
        self._writable()
        with self.db.atomic():
            self.db["meta"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = list(self.db.query("SELECT value FROM meta WHERE key = ?", [key]))
        return json.loads(rows[0]["value"]) if rows else default

    def set_run_settings(self, settings: dict[str, Any]) -> None:
        """Record the run's settings (JSON values by name), replacing those named."""
        self._writable()
        now = time.time()
        with self.db.atomic():
            for name, value in settings.items():
                self.db["run_settings"].upsert(
                    {"name": name, "value": json.dumps(value, sort_keys=True), "set_at": now}, pk="name"
                )

    def run_settings(self) -> dict[str, Any]:
        """The run's settings as recorded when it started (empty for runs made before them)."""
        return {r["name"]: json.loads(r["value"]) for r in self.db.query("SELECT * FROM run_settings")}

    # -- candidates -------------------------------------------------------------------

    def add_candidate(self, c: Candidate) -> None:
        self._writable()
        now = time.time()
        with self.db.atomic():
            self.db["candidates"].insert(
                {
                    "id": c.id, "generation": c.generation, "idx": c.idx,
                    "parent_id": c.parent_id, "second_parent_id": c.second_parent_id,
                    "commit_sha": c.commit, "persona": c.persona, "model": c.model,
                    "hypothesis": c.hypothesis, "edit_format": c.edit_format,
                    "status": c.status.value, "message": c.message,
                    "archive_version": c.archive_version, "repair_of": c.repair_of,
                    "diff_hash": c.diff_hash, "created_at": now, "updated_at": now,
                }
            )

    def record_proposal(
        self, cid: str, commit: str | None, model: str, hypothesis: str, edit_format: str,
        second_parent_id: str | None = None,
    ) -> None:
        self._writable()
        updates = {"commit_sha": commit, "model": model, "hypothesis": hypothesis,
                   "edit_format": edit_format, "updated_at": time.time()}
        if second_parent_id is not None:
            updates["second_parent_id"] = second_parent_id
        with self.db.atomic():
            self.db["candidates"].update(cid, updates)

    def set_status(self, cid: str, status: Status, message: str | None = None, **fields: Any) -> None:
        """Move a candidate to `status`, refusing transitions `arena.records` forbids."""
        self._writable()
        old = self.candidate(cid).status
        if old != status:
            check_transition(old, status)
        updates: dict[str, Any] = {"status": status.value, "updated_at": time.time(), **fields}
        if message is not None:
            updates["message"] = message
        with self.db.atomic():
            self.db["candidates"].update(cid, updates)

    def candidate(self, cid: str) -> Candidate:
        rows = list(self.db.query("SELECT * FROM candidates WHERE id = ?", [cid]))
        if not rows:
            raise StoreError(f"no candidate {cid!r} in {self.path}")
        return _candidate(rows[0])

    def candidates(self, generation: int | None = None) -> list[Candidate]:
        if generation is None:
            rows = self.db.query("SELECT * FROM candidates ORDER BY generation, idx")
        else:
            rows = self.db.query(
                "SELECT * FROM candidates WHERE generation = ? ORDER BY idx", [generation]
            )
        return [_candidate(r) for r in rows]

    # -- evaluations ------------------------------------------------------------------

    def record_diff_hash(self, cid: str, digest: str) -> None:
        """The guard's normalised diff hash of a committed candidate; the first candidate
        with a hash owns it in `known_diffs`."""
        self._writable()
        with self.db.atomic():
            self.db["candidates"].update(cid, {"diff_hash": digest, "updated_at": time.time()})
            self.db.execute("INSERT OR IGNORE INTO known_diffs (hash, candidate_id) VALUES (?, ?)", [digest, cid])

    def known_diffs(self) -> dict[str, str | None]:
        """Every normalised diff hash seen so far -> the candidate that first had it
        (None for hashes carried over from a store older than migration 0002)."""
        return {r["hash"]: r["candidate_id"] for r in self.db.query("SELECT hash, candidate_id FROM known_diffs")}

    def start_evaluation(self, cid: str, seed: int, generation: int, purpose: Purpose) -> int:
        self._writable()
        with self.db.atomic():
            row = self.db["evaluations"].insert(
                {"candidate_id": cid, "seed": seed, "generation": generation,
                 "purpose": Purpose(purpose).value, "status": "running", "started_at": time.time()}
            )
        return int(row.last_pk)

    def finish_evaluation(self, eval_id: int, result: RunResult) -> None:
        self._writable()
        with self.db.atomic():
            self.db["evaluations"].update(
                eval_id,
                {
                    "status": result.status.value, "message": result.message[-4000:],
                    "val_bpb": result.val_bpb, "test_bpb": result.test_bpb,
                    "peak_mem_mb": result.peak_mem_mb,
                    "training_seconds": result.training_seconds,
                    "wall_seconds": result.wall_seconds,
                    "cpu_seconds": result.cpu_seconds,
                    "device_type": result.device_type, "device_name": result.device_name,
                    "log_path": result.log_path,
                    "claimed": json.dumps(result.claimed, default=str),
                    "finished_at": time.time(),
                },
            )

    def cancel_evaluation(self, eval_id: int, reason: str = "cancelled") -> None:
        """A run the loop called off (its candidate already failed on another seed)."""
        self._writable()
        with self.db.atomic():
            self.db["evaluations"].update(
                eval_id, {"status": "cancelled", "message": reason, "finished_at": time.time()}
            )

    def interrupt_evaluation(self, eval_id: int, reason: str) -> None:
        """One run that came back without an outcome (the arena called it off): it is redone."""
        self._writable()
        with self.db.atomic():
            self.db["evaluations"].update(
                eval_id, {"status": "interrupted", "message": reason, "finished_at": time.time()}
            )

    def interrupt_running(self) -> list[Evaluation]:
        """Mark evaluations left `running` by a dead process as `interrupted` (they are
        redone); returns them."""
        self._writable()
        rows = [_evaluation(r) for r in self.db.query("SELECT * FROM evaluations WHERE status = 'running'")]
        if rows:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE evaluations SET status = 'interrupted', finished_at = ? WHERE status = 'running'",
                    [time.time()],
                )
        return rows

    def evaluations(self, cid: str | None = None, include_unfinished: bool = False) -> list[Evaluation]:
        where, params = [], []
        if cid is not None:
            where.append("candidate_id = ?")
            params.append(cid)
        if not include_unfinished:
            where.append("status NOT IN ('running', 'interrupted')")
        sql = "SELECT * FROM evaluations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_evaluation(r) for r in self.db.query(sql + " ORDER BY id", params)]

    # -- llm calls and events -----------------------------------------------------------

    def add_llm_call(self, call: LLMCall) -> None:
        self._writable()
        with self.db.atomic():
            self.db["llm_calls"].insert(
                {"candidate_id": call.candidate_id, "persona": call.persona, "model": call.model,
                 "prompt_tokens": int(call.prompt_tokens), "completion_tokens": int(call.completion_tokens),
                 "cost_usd": float(call.cost_usd), "latency_s": float(call.latency_s),
                 "error": call.error, "created_at": call.created_at}
            )

    def llm_calls(self) -> list[LLMCall]:
        return [
            LLMCall(r["candidate_id"], r["persona"], r["model"], r["prompt_tokens"],
                    r["completion_tokens"], r["cost_usd"], r["latency_s"], r["error"], r["created_at"])
            for r in self.db.query("SELECT * FROM llm_calls ORDER BY id")
        ]

    def total_cost(self) -> float:
        rows = list(self.db.query("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM llm_calls"))
        return float(rows[0]["c"])

    def cost_by_candidate(self) -> dict[str, float]:
        return {
            r["candidate_id"]: float(r["c"])
            for r in self.db.query(
                "SELECT candidate_id, SUM(cost_usd) AS c FROM llm_calls "
                "WHERE candidate_id IS NOT NULL GROUP BY candidate_id"
            )
        }

    def add_event(
        self, kind: str, message: str = "", generation: int | None = None,
        candidate_id: str | None = None, payload: dict | None = None,
    ) -> None:
        self._writable()
        with self.db.atomic():
            self.db["events"].insert(
                {"created_at": time.time(), "generation": generation, "candidate_id": candidate_id,
                 "kind": kind, "message": message, "payload": json.dumps(payload or {}, default=str)}
            )

    def events(self, limit: int = 50) -> list[dict]:
        return list(self.db.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]))

    # -- generations (archive versions) -------------------------------------------------

    def finish_generation(self, rec: GenerationRecord) -> None:
        self._writable()
        with self.db.atomic():
            self.db["generations"].insert(
                {"generation": rec.generation, "finished_at": rec.finished_at,
                 "hypervolume": rec.hypervolume, "archive": json.dumps(rec.archive),
                 "statuses": json.dumps(rec.statuses), "summary": json.dumps(rec.summary)}
            )

    def generations(self) -> list[GenerationRecord]:
        return [
            GenerationRecord(r["generation"], r["finished_at"], r["hypervolume"],
                             json.loads(r["archive"]), json.loads(r["statuses"]), json.loads(r["summary"]))
            for r in self.db.query("SELECT * FROM generations ORDER BY generation")
        ]

    def last_generation(self) -> int:
        """The newest archive version (finished generation), -1 before the root is measured."""
        rows = list(self.db.query("SELECT MAX(generation) AS g FROM generations"))
        g = rows[0]["g"]
        return -1 if g is None else int(g)


def _split_sql(sql: str) -> Iterator[str]:
    for part in sql.split(";"):
        lines = [ln for ln in part.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if lines:
            yield "\n".join(lines)


def _candidate(r: dict) -> Candidate:
    return Candidate(
        id=r["id"], generation=r["generation"], idx=r["idx"], parent_id=r["parent_id"],
        persona=r["persona"], status=Status(r["status"]), archive_version=r["archive_version"],
        commit=r["commit_sha"], second_parent_id=r["second_parent_id"], model=r["model"],
        hypothesis=r["hypothesis"], edit_format=r["edit_format"], message=r["message"],
        repair_of=r["repair_of"], diff_hash=r["diff_hash"], created_at=r["created_at"], updated_at=r["updated_at"],
    )


def _evaluation(r: dict) -> Evaluation:
    return Evaluation(
        id=r["id"], candidate_id=r["candidate_id"], seed=r["seed"], generation=r["generation"],
        purpose=Purpose(r["purpose"]), status=r["status"], message=r["message"], val_bpb=r["val_bpb"],
        test_bpb=r["test_bpb"], peak_mem_mb=r["peak_mem_mb"], training_seconds=r["training_seconds"],
        wall_seconds=r["wall_seconds"], cpu_seconds=r["cpu_seconds"],
        device_type=r["device_type"], device_name=r["device_name"],
        log_path=r["log_path"], started_at=r["started_at"], finished_at=r["finished_at"],
    )
