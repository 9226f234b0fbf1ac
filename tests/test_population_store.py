"""The store: schema migrations, one writer, WAL readers, facts it refuses."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import evaluated_run

from arena.records import Status
from population.store import (
    MIGRATIONS,
    Candidate,
    LLMCall,
    SchemaMismatch,
    Store,
    StoreLocked,
    store_path,
)


def _cand(cid: str = "c1", status: Status = Status.PROPOSED) -> Candidate:
    return Candidate(id=cid, generation=1, idx=int(cid[1:]), parent_id=None, persona="tuner", status=status,
                     archive_version=0, commit="abc")


def test_new_store_records_migrations_and_uses_wal(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        assert s.schema_version() == [name for name, _ in MIGRATIONS]
        mode = next(iter(s.db.query("PRAGMA journal_mode")))["journal_mode"]
        assert mode == "wal"
        assert {"runs", "candidates", "evaluations", "llm_calls", "events"} <= set(s.db.table_names())


def test_second_writer_is_refused_and_lock_is_released_on_close(tmp_path):
    path = store_path(tmp_path)
    first = Store.open(path)
    with pytest.raises(StoreLocked, match="another evolve process"):
        Store.open(path)
    first.close()
    Store.open(path).close()


def test_reader_does_not_block_writer(tmp_path):
    path = store_path(tmp_path)
    writer = Store.open(path)
    writer.add_candidate(_cand())
    reader = Store.open(path, readonly=True)
    reader.db.execute("BEGIN")
    assert [c.id for c in reader.candidates()] == ["c1"]  # the reader holds a snapshot open
    writer.add_candidate(_cand("c2"))  # and the writer still commits
    assert [c.id for c in reader.candidates()] == ["c1"]
    reader.db.execute("COMMIT")
    assert [c.id for c in reader.candidates()] == ["c1", "c2"]
    with pytest.raises(Exception, match="read-only"):
        reader.add_candidate(_cand("c3"))
    reader.close()
    writer.close()


def test_status_transitions_follow_the_records(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(_cand())
        with pytest.raises(ValueError, match="cannot go from proposed to confirmed"):
            s.set_status("c1", Status.CONFIRMED)
        s.set_status("c1", Status.RUNNING)
        s.set_status("c1", Status.CRASHED, "Traceback ...")
        assert s.candidate("c1").status == Status.CRASHED
        assert s.candidate("c1").message == "Traceback ..."


def test_a_finished_evaluation_cannot_be_recorded_twice_but_interrupted_ones_are_redone(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(_cand())
        e1 = s.start_evaluation("c1", 0, 1, "initial")
        s.finish_evaluation(e1, evaluated_run("c1", 0, 1.23))
        with pytest.raises(sqlite3.IntegrityError):
            s.start_evaluation("c1", 0, 1, "initial")
        s.start_evaluation("c1", 1, 1, "initial")
        interrupted = s.interrupt_running()
        assert [(e.candidate_id, e.seed) for e in interrupted] == [("c1", 1)]
        e3 = s.start_evaluation("c1", 1, 1, "initial")  # the redo
        s.finish_evaluation(e3, evaluated_run("c1", 1, 1.25))
        done = s.evaluations("c1")
        assert [(e.seed, e.val_bpb, e.device_type, e.device_name) for e in done] == [
            (0, 1.23, "cpu", "test cpu"), (1, 1.25, "cpu", "test cpu")]
        everything = s.evaluations("c1", include_unfinished=True)
        assert [e.status for e in everything] == ["evaluated", "interrupted", "evaluated"]


def test_llm_calls_events_and_meta(tmp_path):
    with Store.open(store_path(tmp_path)) as s:
        s.add_candidate(_cand())
        s.add_llm_call(LLMCall("c1", "tuner", "openai/gpt-4o", 1000, 200, 0.012, 3.5, "", 1.0))
        s.add_llm_call(LLMCall("c1", "tuner", "openai/gpt-4o", 0, 0, 0.0, 30.0, "Timeout: no reply", 2.0))
        assert s.total_cost() == pytest.approx(0.012)
        assert s.cost_by_candidate() == {"c1": pytest.approx(0.012)}
        assert [c.error for c in s.llm_calls()] == ["", "Timeout: no reply"]
        s.add_event("confirmed", "c1 confirmed", 1, "c1", {"p": 0.01})
        assert s.events()[0]["kind"] == "confirmed"
        s.set_meta("epsilon", [0.01, 2.0])
        assert s.get_meta("epsilon") == [0.01, 2.0]


def test_a_database_from_another_schema_is_refused(tmp_path):
    path = store_path(tmp_path)
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaMismatch, match="9999_from_the_future"):
        Store.open(path)


def test_migration_0002_moves_repair_targets_and_diff_hashes_out_of_meta(tmp_path):
    """A store written before 0002 (only 0001 applied, run state under meta keys) opens
    with its repair targets and known diff hashes as columns and a table."""
    path = store_path(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
                 "applied_at REAL NOT NULL)")
    conn.executescript(MIGRATIONS[0][1])
    conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, 0)", [MIGRATIONS[0][0]])
    for cid, idx in (("g001c00", 0), ("g001c01", 1)):
        conn.execute("INSERT INTO candidates (id, generation, idx, persona, status, archive_version, created_at, "
                     "updated_at) VALUES (?, 1, ?, 'fixer', 'proposed', 0, 0, 0)", [cid, idx])
    conn.execute("""INSERT INTO meta VALUES ('repair:g001c01', '"g001c00"')""")
    conn.execute("""INSERT INTO meta VALUES ('known_hashes', '["aaa", "bbb"]')""")
    conn.execute("""INSERT INTO meta VALUES ('epsilon', '[0.01, 2.0]')""")
    conn.commit()
    conn.close()
    with Store.open(path) as s:
        assert s.schema_version() == [name for name, _ in MIGRATIONS]
        assert s.candidate("g001c01").repair_of == "g001c00" and s.candidate("g001c00").repair_of is None
        assert s.known_diffs() == {"aaa": None, "bbb": None}
        assert s.get_meta("known_hashes") is None and s.get_meta("repair:g001c01") is None
        assert s.get_meta("epsilon") == [0.01, 2.0]  # run settings stay
        s.record_diff_hash("g001c00", "ccc")
        s.record_diff_hash("g001c01", "ccc")  # a duplicate: the first candidate keeps the hash
        assert s.known_diffs()["ccc"] == "g001c00" and s.candidate("g001c01").diff_hash == "ccc"
