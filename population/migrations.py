"""The store's schema: named migrations, applied in order by population.store.

Each entry is (name, SQL). `Store.open` applies the ones a database lacks and records
them in `schema_migrations`. Never edit a released migration: add a new one (and keep an
old database in the tests to show it opens).

What it does not do: open databases or run anything (population.store does).
"""

from __future__ import annotations

# Named migrations, applied in order and recorded in `schema_migrations`. Never edit a
# released one: add a new one. A database whose recorded migrations are not a prefix of
# this list was written by a newer (or foreign) version and is refused.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
            pid INTEGER NOT NULL,
            argv TEXT NOT NULL,
            config TEXT NOT NULL,
            outcome TEXT
        );
        CREATE TABLE candidates (
            id TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            parent_id TEXT REFERENCES candidates(id),
            second_parent_id TEXT REFERENCES candidates(id),
            commit_sha TEXT,
            persona TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            hypothesis TEXT NOT NULL DEFAULT '',
            edit_format TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            archive_version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (generation, idx)
        );
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            candidate_id TEXT NOT NULL REFERENCES candidates(id),
            seed INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            purpose TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            val_bpb REAL,
            test_bpb REAL,
            peak_mem_mb REAL,
            training_seconds REAL,
            wall_seconds REAL,
            device_type TEXT NOT NULL DEFAULT '',
            device_name TEXT NOT NULL DEFAULT '',
            log_path TEXT NOT NULL DEFAULT '',
            claimed TEXT NOT NULL DEFAULT '{}',
            started_at REAL NOT NULL,
            finished_at REAL
        );
        -- a (candidate, seed) pair is measured at most once, interrupted attempts stay
        -- on record beside the attempt that replaced them
        CREATE UNIQUE INDEX evaluations_once ON evaluations (candidate_id, seed)
            WHERE status != 'interrupted';
        CREATE INDEX evaluations_candidate ON evaluations (candidate_id);
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY,
            candidate_id TEXT,
            persona TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            latency_s REAL NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            generation INTEGER,
            candidate_id TEXT,
            kind TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            payload TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE generations (
            generation INTEGER PRIMARY KEY,
            finished_at REAL NOT NULL,
            hypervolume REAL NOT NULL,
            archive TEXT NOT NULL,
            statuses TEXT NOT NULL,
            summary TEXT NOT NULL
        );
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    (
        # run state that lived as JSON under `meta` keys becomes columns and a table:
        # the candidate a repairing child was asked to repair, and the normalised diff
        # hash of every committed candidate (the guard's duplicate check)
        "0002_repair_and_diff_columns",
        """
        ALTER TABLE candidates ADD COLUMN repair_of TEXT REFERENCES candidates(id);
        ALTER TABLE candidates ADD COLUMN diff_hash TEXT NOT NULL DEFAULT '';
        CREATE TABLE known_diffs (
            hash TEXT PRIMARY KEY,
            candidate_id TEXT
        );
        UPDATE candidates SET repair_of = (
            SELECT json_extract(meta.value, '$') FROM meta WHERE meta.key = 'repair:' || candidates.id
        );
        INSERT OR IGNORE INTO known_diffs (hash, candidate_id)
            SELECT value, NULL FROM json_each(COALESCE((SELECT value FROM meta WHERE key = 'known_hashes'), '[]'));
        DELETE FROM meta WHERE key = 'known_hashes' OR key LIKE 'repair:%';
        """,
    ),
    (
        "0003_evaluations_cpu_seconds",
        """
        -- CPU time (user + system) of the training process tree, measured from outside:
        -- the budget's unit on CPU (arena.budget)
        ALTER TABLE evaluations ADD COLUMN cpu_seconds REAL;
        """,
    ),
    (
        # the settings a run was started with (budget, generations, population, model...),
        # so that --resume goes on with them
        "0004_run_settings",
        """
        CREATE TABLE run_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            set_at REAL NOT NULL
        );
        """,
    ),
]
