"""The TUI over a real run directory: a real git repository and a real SQLite store
written with population's own Store API, driven with Textual's Pilot."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

import pytest
from conftest import evaluated_run
from textual.widgets import DataTable

from arena.execute import run_name
from arena.records import RunRequest, RunResult, Status
from arena.repo import ExperimentRepo
from population.scoring import Scorer
from population.store import Candidate, GenerationRecord, LLMCall, Store, store_path
from tui.app import EvolveApp, main, run
from tui.details import CandidateDetails
from tui.pareto_plot import PlotPoint, scatter_text

TRAIN_PY = "DEPTH = 4\nN_EMBD = 128\nLEARNING_RATE = 0.003\n"
# (seed, val_bpb, peak_mem_mb) per candidate
ROOT_RUNS = [(0, 1.000, 200.0), (1, 1.010, 202.0), (2, 0.995, 198.0)]
CHILD_RUNS = [(0, 0.950, 230.0), (1, 0.962, 232.0)]
SLIM_RUNS = [(0, 1.020, 150.0), (1, 1.030, 152.0)]
CRASH_LOG = "step 1 loss 3.2\nstep 2 loss nan\nTraceback: boom\n"


def _result(cid: str, commit: str, seed: int, val: float, mem: float, log_path: str = "") -> RunResult:
    return evaluated_run(cid, seed, val, mem, commit=commit, test_bpb=val + 0.01, training_seconds=30.0,
                         wall_seconds=40.0, log_path=log_path)


def _mean_sd(runs: list[tuple[int, float, float]]) -> tuple[float, float, float]:
    vals = [v for _, v, _ in runs]
    return statistics.fmean(vals), statistics.stdev(vals), statistics.fmean(m for _, _, m in runs)


def _build_run(run_dir: Path) -> tuple[Store, dict[str, str]]:
    """A run after generation 1: root on 3 seeds, two confirmed children, one crashed;
    the writer is left open (the caller closes it)."""
    repo = ExperimentRepo.create(run_dir, TRAIN_PY, "# the harness\n", "+++\n+++\n")
    root = repo.root_commit
    commits = {
        "root": root,
        "g001c00": repo.commit_candidate(root, TRAIN_PY.replace("N_EMBD = 128", "N_EMBD = 192"),
                                         "g001c00 widen: wider is better"),
        "g001c01": repo.commit_candidate(root, TRAIN_PY.replace("DEPTH = 4", "DEPTH = 2"),
                                         "g001c01 slim: fewer layers, less memory"),
        "g001c02": repo.commit_candidate(root, TRAIN_PY.replace("0.003", "0.3"), "g001c02 hot lr"),
    }
    logs = run_dir / "logs"

    store = Store.open(store_path(run_dir))
    store.start_session(["evolve", "--generations", "3"], {"population": 3, "generations": 3, "max_cost_usd": 5})
    store.add_candidate(Candidate(id="root", generation=0, idx=0, parent_id=None, persona="root",
                                  status=Status.PROPOSED, archive_version=-1, commit=root,
                                  hypothesis="the unmodified train.py"))
    store.set_status("root", Status.RUNNING)
    for seed, val, mem in ROOT_RUNS:
        e = store.start_evaluation("root", seed, 0, "root")
        store.finish_evaluation(e, _result("root", root, seed, val, mem))
    store.set_status("root", Status.EVALUATED)
    store.set_status("root", Status.CONFIRMED, "root")
    store.set_meta("device_type", "cpu")
    r_mean, r_sd, r_mem = _mean_sd(ROOT_RUNS)
    store.set_meta("noise_floor", {"val_std": r_sd, "mem_std": 2.0, "n_seeds": 3,
                                   "val_mean": r_mean, "mem_mean": r_mem})
    store.set_meta("epsilon", [r_sd, 2.0])
    store.set_meta("reference", [r_mean * 1.25, 4 * r_mem])

    for idx, (cid, persona, hyp, runs) in enumerate([
        ("g001c00", "explorer", "widen: wider is better", CHILD_RUNS),
        ("g001c01", "tuner", "slim: fewer layers, less memory", SLIM_RUNS),
    ]):
        store.add_candidate(Candidate(id=cid, generation=1, idx=idx, parent_id="root", persona=persona,
                                      status=Status.PROPOSED, archive_version=0, commit=commits[cid],
                                      hypothesis=hyp))
        store.set_status(cid, Status.RUNNING)
        for seed, val, mem in runs:
            e = store.start_evaluation(cid, seed, 1, "initial")
            log_path = str(logs / f"{cid}-s{seed}-aaaaaa.log") if cid == "g001c00" and seed == 1 else ""
            store.finish_evaluation(e, _result(cid, commits[cid], seed, val, mem, log_path))
        store.set_status(cid, Status.EVALUATED)
        store.set_status(cid, Status.CONFIRMED, f"confirmed {cid}")
    store.add_candidate(Candidate(id="g001c02", generation=1, idx=2, parent_id="root", persona="explorer",
                                  status=Status.PROPOSED, archive_version=0, commit=commits["g001c02"],
                                  hypothesis="hot lr"))
    store.set_status("g001c02", Status.RUNNING)
    e = store.start_evaluation("g001c02", 0, 1, "initial")
    store.finish_evaluation(e, RunResult("g001c02", commits["g001c02"], 0, Status.NAN, message=CRASH_LOG,
                                         device_type="cpu", log_path=str(logs / "g001c02-s0-cccccc.log")))
    store.set_status("g001c02", Status.NAN, "loss became nan")
    store.add_llm_call(LLMCall("g001c00", "explorer", "mock/model", 100, 50, 0.0123, 1.0, "", time.time()))
    archive = []
    for cid, runs in (("g001c00", CHILD_RUNS), ("g001c01", SLIM_RUNS)):
        mean, sd, mem = _mean_sd(runs)
        archive.append({"candidate_id": cid, "val_bpb": mean, "peak_mem_mb": mem, "val_std": sd, "n_seeds": 2})
    store.finish_generation(GenerationRecord(0, time.time(), 1.0, [{"candidate_id": "root", "val_bpb": r_mean,
                                                                     "peak_mem_mb": r_mem, "val_std": r_sd,
                                                                     "n_seeds": 3}], {}, {}))
    store.finish_generation(GenerationRecord(1, time.time(), 2.5, archive, {}, {}))
    store.add_event("noise_floor", "noise floor: val_bpb std 0.0076", 0)
    store.add_event("nan", "g001c02 nan on seed 0: loss became nan", 1, "g001c02")
    store.add_event("generation", "generation 1 done: archive 2", 1)
    return store, commits


@pytest.fixture(scope="module")
def built_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Built once per module; each test works on its own copy."""
    d = tmp_path_factory.mktemp("built") / "run"
    store, commits = _build_run(d)
    store.close()
    return d, commits


def _write_logs(run_dir: Path) -> None:
    logs = run_dir / "logs"
    logs.mkdir()
    (logs / "g001c00-s1-aaaaaa.log").write_text("step 1 loss 4.1\nstep 2 loss 3.7\n")
    (logs / "g001c02-s0-cccccc.log").write_text(CRASH_LOG)


@pytest.fixture
def run_dir(tmp_path, built_run) -> Path:
    """A copy of the built run with its own logs. The stored log paths point into the
    built directory, which has none, so the TUI finds each copy's own logs the way it
    does after a run directory was moved."""
    d = tmp_path / "run"
    shutil.copytree(built_run[0], d)
    _write_logs(d)
    return d


@pytest.fixture
def live_run(run_dir, built_run):
    """The run directory with its writer open, as while evolve runs."""
    store = Store.open(store_path(run_dir))
    yield run_dir, store, built_run[1]
    store.close()


async def _wait(pilot, cond, what: str, limit_s: float = 15.0) -> None:
    for _ in range(int(limit_s / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _drive(run_dir: Path, scenario, interval: float = 60.0, message_hook=None) -> EvolveApp:
    """Run `scenario(app, pilot)` inside the app; a long interval means refreshes come
    only from the r key unless the scenario says otherwise."""
    app = EvolveApp(run_dir, interval=interval)

    async def go() -> None:
        async with app.run_test(size=(180, 50), message_hook=message_hook) as pilot:
            await _wait(pilot, lambda: app.refreshes >= 1 or app.error is not None, "the first snapshot")
            await scenario(app, pilot)

    asyncio.run(go())
    return app


def _column(table, key: str) -> list[str]:
    return [str(table.get_row(row_key)[list(table.columns).index(key)])
            for row_key in table.rows]


def test_tables_show_the_stored_rows(run_dir):
    seen = {}

    async def scenario(app, pilot):
        pop, arch, events = (app.query_one(f"#{i}") for i in ("population", "archive", "events"))
        seen["ids"] = _column(pop, "id")
        seen["status"] = _column(pop, "status")
        seen["scores"] = dict(zip(seen["ids"], _column(pop, "val_bpb")))
        seen["mem"] = dict(zip(seen["ids"], _column(pop, "mem")))
        seen["archive"] = _column(arch, "id")
        seen["archive_scores"] = _column(arch, "val_bpb")
        seen["events"] = _column(events, "kind")
        seen["header"] = str(app.query_one("#header").content)

    _drive(run_dir, scenario)
    assert seen["ids"] == ["root", "g001c00", "g001c01", "g001c02"]
    assert seen["status"] == ["confirmed", "confirmed", "confirmed", "nan"]
    mean, sd, mem = _mean_sd(CHILD_RUNS)
    with Store.open(store_path(run_dir), readonly=True) as store:  # the loop's scoring rule
        estimate = Scorer.from_store(store).score("g001c00", 1).val_bpb
    assert seen["scores"]["g001c00"] == f"{estimate:.4f} ± {sd:.4f} (2)"
    assert seen["mem"]["g001c00"] == f"{mem:.0f}"
    r_mean, r_sd, _ = _mean_sd(ROOT_RUNS)
    assert seen["scores"]["root"] == f"{r_mean:.4f} ± {r_sd:.4f} (3)"
    assert seen["scores"]["g001c02"] == "-"  # a failed run has no metric
    # the stored archive version, lowest val_bpb first
    assert seen["archive"] == ["g001c00", "g001c01"]
    assert seen["archive_scores"][0] == f"{mean:.4f} ± {sd:.4f} (2)"
    assert seen["events"] == ["generation", "nan", "noise_floor"]  # newest first
    header = seen["header"]
    assert "generation 1 of 3 done" in header and "archive v1" in header
    assert "confirmed 3" in header and "nan 1" in header
    assert "cost $0.0123 of $5.00" in header
    assert f"val_bpb sd {r_sd:.5f} over 3 seeds" in header
    assert f"running (pid {os.getpid()})" in header  # the session's pid is alive: ours


def test_rows_added_while_the_app_runs_appear_after_a_refresh(live_run):
    run_dir, store, commits = live_run
    seen = {}

    async def scenario(app, pilot):
        pop = app.query_one("#population")
        seen["before"] = pop.row_count
        store.add_candidate(Candidate(id="g002c00", generation=2, idx=0, parent_id="g001c00",
                                      persona="tuner", status=Status.PROPOSED, archive_version=1,
                                      commit=commits["g001c00"], hypothesis="a fresh idea"))
        store.set_status("g002c00", Status.RUNNING)
        store.start_evaluation("g002c00", 0, 2, "initial")
        store.add_event("proposed", "g002c00 proposed by tuner", 2, "g002c00")
        await pilot.pause(0.2)
        seen["not_yet"] = pop.row_count  # the interval is long: nothing refreshed on its own
        n = app.refreshes
        await pilot.press("r")
        await _wait(pilot, lambda: app.refreshes > n, "the refresh")
        seen["after"] = _column(pop, "id")
        seen["status"] = _column(pop, "status")[-1]
        seen["event"] = _column(app.query_one("#events"), "kind")[0]
        seen["header"] = str(app.query_one("#header").content)

    _drive(run_dir, scenario)
    assert seen["before"] == seen["not_yet"] == 4
    assert seen["after"][-1] == "g002c00"
    assert seen["status"] == "running s0"  # seed 0 in flight
    assert seen["event"] == "proposed"
    assert "generation 2 of 3 in progress" in seen["header"] and "1 running" in seen["header"]


def test_a_refresh_keeps_the_selection_and_does_not_restart_the_log(live_run):
    run_dir, store, _ = live_run
    highlights: list[str] = []
    seen = {}

    def hook(message) -> None:
        if isinstance(message, DataTable.RowHighlighted):
            highlights.append(str(message.row_key.value))

    async def scenario(app, pilot):
        await pilot.press("down")
        await _wait(pilot, lambda: "step 2 loss 3.7" in app.query_one("#log").lines, "g001c00's log")
        highlights.clear()
        for i in range(2):  # new rows: the table is rebuilt
            store.add_candidate(Candidate(id=f"g002c0{i}", generation=2, idx=i, parent_id="root",
                                          persona="tuner", status=Status.PROPOSED, archive_version=1))
            n = app.refreshes
            await pilot.press("r")
            await _wait(pilot, lambda n=n: app.refreshes > n, "the refresh")
        seen["rows"] = app.query_one("#population").row_count
        seen["selected"] = app.selected
        seen["cursor"] = app.query_one("#population").selected_id

    _drive(run_dir, scenario, message_hook=hook)
    assert seen["rows"] == 6
    assert seen["selected"] == seen["cursor"] == "g001c00"
    assert highlights == []  # no detour through row 0 (which would reload the log tail)


def test_the_interval_refreshes_on_its_own(live_run):
    run_dir, store, _ = live_run
    seen = {}

    async def scenario(app, pilot):
        store.add_event("generation", "generation 2 done", 2)
        await _wait(pilot, lambda: _column(app.query_one("#events"), "message")[0] == "generation 2 done",
                    "the timed refresh")
        seen["ok"] = True

    _drive(run_dir, scenario, interval=0.2)
    assert seen["ok"]


def _fingerprint(run_dir: Path) -> dict:
    db = store_path(run_dir)
    with Store.open(db, readonly=True) as s:
        counts = {t: s.db[t].count for t in ("runs", "candidates", "evaluations", "llm_calls", "events",
                                               "generations", "meta")}
    files = {}
    for p in [db, run_dir / ".git" / "index", run_dir / ".git" / "HEAD", *sorted((run_dir / "logs").iterdir())]:
        files[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    refs = sorted(str(p.relative_to(run_dir)) for p in (run_dir / ".git" / "refs").rglob("*"))
    return {"counts": counts, "files": files, "refs": refs}


def test_the_app_never_writes(run_dir):
    before = _fingerprint(run_dir)

    async def scenario(app, pilot):
        for _ in range(3):
            n = app.refreshes
            await pilot.press("r")
            await _wait(pilot, lambda n=n: app.refreshes > n, "a refresh")
        await pilot.press("down", "enter")  # details read git
        await _wait(pilot, lambda: isinstance(app.screen, CandidateDetails) and app.screen.diff_text is not None,
                    "the diff")
        await pilot.press("escape")

    _drive(run_dir, scenario)
    after = _fingerprint(run_dir)
    assert after == before
    wal = Path(str(store_path(run_dir)) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # SQLite's reader sidecar, never written to


def test_details_show_hypothesis_message_and_diff_against_parent(run_dir):
    seen = {}

    async def scenario(app, pilot):
        await pilot.press("down")  # root -> g001c00
        assert app.selected == "g001c00"
        await pilot.press("enter")
        await _wait(pilot, lambda: isinstance(app.screen, CandidateDetails) and app.screen.diff_text is not None,
                    "the diff")
        screen = app.screen
        seen["diff"] = screen.diff_text
        seen["summary"] = str(screen.query_one("#summary").content)
        await pilot.press("escape")
        seen["closed"] = not isinstance(app.screen, CandidateDetails)
        await pilot.press("enter", "escape")  # closed before git answers: no harm
        n = app.refreshes
        await pilot.press("r")
        await _wait(pilot, lambda: app.refreshes > n, "a refresh after the quick close")
        seen["still_running"] = app.is_running and app.error is None

    _drive(run_dir, scenario)
    assert seen["still_running"]
    assert "-N_EMBD = 128" in seen["diff"] and "+N_EMBD = 192" in seen["diff"]
    assert "widen: wider is better" in seen["summary"] and "confirmed g001c00" in seen["summary"]
    assert "seed 0" in seen["summary"] and "seed 1" in seen["summary"]
    assert "test_bpb" not in seen["summary"]  # the sealed split stays out of the selector's view
    assert seen["closed"]


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_s_cycles_the_population_order_and_keeps_the_selection(run_dir):
    seen = {}

    async def scenario(app, pilot):
        pop = app.query_one("#population")
        await pilot.press("down")  # g001c00
        orders = []
        for _ in range(3):
            await pilot.press("s")
            orders.append((pop.order, _column(pop, "id"), app.selected, pop.selected_id))
        seen["orders"] = orders

    _drive(run_dir, scenario)
    newest, best, oldest = seen["orders"]
    assert newest[:2] == ("newest first", ["g001c02", "g001c01", "g001c00", "root"])
    # means: g001c00 0.956, root 1.0017, g001c01 1.025; the failed g001c02 has none
    assert best[:2] == ("best val_bpb first", ["g001c00", "root", "g001c01", "g001c02"])
    assert oldest[:2] == ("oldest first", ["root", "g001c00", "g001c01", "g001c02"])
    assert all(o[2] == o[3] == "g001c00" for o in seen["orders"])


def test_the_focused_table_drives_the_selection(run_dir):
    seen = {}

    async def scenario(app, pilot):
        seen["start"] = app.selected  # the archive table filling up does not steal it
        await pilot.press("tab")  # to the archive table: its highlighted member
        seen["tab"] = (app.focused.id, app.selected)
        await pilot.press("down")
        seen["down"] = app.selected
        await pilot.press("enter")
        await _wait(pilot, lambda: isinstance(app.screen, CandidateDetails), "the details")
        seen["details"] = app.screen.row.id
        await pilot.press("escape", "shift+tab")
        seen["back"] = (app.focused.id, app.selected)

    _drive(run_dir, scenario)
    assert seen["start"] == "root"
    assert seen["tab"] == ("archive", "g001c00")
    assert seen["down"] == seen["details"] == "g001c01"
    assert seen["back"] == ("population", "root")


def test_log_tail_follows_the_selected_candidate(run_dir):
    seen = {}
    log_file = run_dir / "logs" / "g001c00-s1-aaaaaa.log"

    async def scenario(app, pilot):
        tail = app.query_one("#log")
        await pilot.press("down", "down", "down")  # g001c02: its crash log
        await _wait(pilot, lambda: "Traceback: boom" in tail.lines, "the crash log")
        await pilot.press("up", "up")  # g001c00: its newest run's log
        await _wait(pilot, lambda: "step 2 loss 3.7" in tail.lines, "the first log")
        await asyncio.to_thread(_append, log_file, "step 3 loss 3.5\n")
        await _wait(pilot, lambda: "step 3 loss 3.5" in tail.lines, "the appended line")
        seen["lines"] = list(tail.lines)

    _drive(run_dir, scenario)
    assert "Traceback: boom" not in seen["lines"]  # switching files starts over
    assert seen["lines"][-3:] == ["step 1 loss 4.1", "step 2 loss 3.7", "step 3 loss 3.5"]


def test_a_running_candidates_log_is_found_before_its_path_is_stored(live_run):
    run_dir, store, commits = live_run
    store.add_candidate(Candidate(id="g002c00", generation=2, idx=0, parent_id="g001c00", persona="tuner",
                                  status=Status.PROPOSED, archive_version=1, commit=commits["g001c00"]))
    store.set_status("g002c00", Status.RUNNING)
    store.start_evaluation("g002c00", 3, 2, "initial")
    # named as the arena names it (arena.execute.run_name); the path is stored when the run ends
    name = run_name(RunRequest("g002c00", commits["g001c00"], 3, 1.0))
    (run_dir / "logs" / f"{name}.log").write_text("warming up\n")
    (run_dir / "logs" / f"{name}.eval.log").write_text("evaluator\n")
    seen = {}

    async def scenario(app, pilot):
        await pilot.press("down", "down", "down", "down")
        tail = app.query_one("#log")
        await _wait(pilot, lambda: "warming up" in tail.lines, "the live log")
        seen["lines"] = list(tail.lines)

    _drive(run_dir, scenario)
    assert seen["lines"] == ["warming up"]


def test_missing_or_corrupt_store_is_one_clear_line(tmp_path, capsys):
    assert run(tmp_path / "nowhere") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evolve tui: no run directory at")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(empty) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no store at" in err and "evolve --generations N" in err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    store_path(corrupt).write_bytes(b"this is not sqlite " * 100)
    assert run(corrupt) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the store" in err and "not a database" in err
    assert store_path(corrupt).read_bytes() == b"this is not sqlite " * 100  # left as it was

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(store_path(foreign)) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    before = store_path(foreign).read_bytes()
    assert run(foreign) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evolve tui: ") and "migrations" in err
    assert store_path(foreign).read_bytes() == before  # no schema written into someone else's file


def test_the_app_itself_exits_with_the_error_on_a_missing_store(tmp_path):
    app = _drive(tmp_path, lambda app, pilot: asyncio.sleep(0))
    assert app.return_code == 1
    assert app.error is not None and "no store at" in app.error and "\n" not in app.error


def test_main_without_a_run_dir_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run under runs" in err


def test_scatter_marks_archive_root_and_selected():
    pts = [PlotPoint("root", 1.0, 100.0, "root"), PlotPoint("a", 0.9, 300.0, "member"),
           PlotPoint("b", 1.1, 200.0, "other"), PlotPoint("c", 0.9, 100.0, "selected")]
    lines = scatter_text(pts, width=21, height=5).splitlines()
    grid = [line.split("|", 1)[1] for line in lines[:5]]
    assert lines[0].startswith("  1.1000") and lines[4].startswith("  0.9000")
    assert grid[0][10] == "."  # val 1.1 (top), mem 200 (middle)
    assert grid[2][0] == "R"  # val 1.0 (middle), mem 100 (left)
    assert grid[4][20] == "*" and grid[4][0] == "@"
    assert "100" in lines[6] and "300 MB" in lines[6]
    assert scatter_text([]) == "no measured candidate yet"
