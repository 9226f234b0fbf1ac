"""The evaluation cascade (population.cascade): the robust calibration line, the stopping
rule, and stopped runs in the real loop on the simulated arena's virtual clock."""

from __future__ import annotations

import json

import pytest

from arena.progress import ProgressPoint, RunProgress
from arena.records import Status
from population.cascade import Cascade, fit, theil_sen
from population.program import ProgramConfig
from population.report import device_time_saved, summary_text
from population.simulated import Landscape, simulated_loop
from population.store import Candidate


def points(*pairs: tuple[float, float]) -> list[ProgressPoint]:
    return [ProgressPoint(0, f, loss, 0.0, 0.0) for f, loss in pairs]


def test_theil_sen_ignores_a_wild_claim():
    xs = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    ys = [0.01 + 0.5 * x for x in xs]
    ys[3] = 50.0  # one candidate printed nonsense
    a, b = theil_sen(xs, ys)
    assert abs(b - 0.5) < 1e-9 and abs(a - 0.01) < 1e-9
    cal = fit(0.5, xs, ys)
    y, var = cal.predict(0.4)
    assert abs(y - 0.21) < 1e-9 and var < 1e-6


def test_difference_needs_both_runs_past_the_checkpoint():
    child = points((0.25, 3.0), (0.5, 2.9))
    parent = points((0.25, 2.8))
    assert Cascade.difference(child, parent, 0.5) is None
    assert abs(Cascade.difference(child, parent, 0.25) - 0.2) < 1e-12
    assert Cascade.difference(child, points((0.25, float("nan"))), 0.25) is None


def _run(tmp_path, cfg, **kw):
    loop, store, repo, arena = simulated_loop(tmp_path / "run", cfg, landscape=Landscape(sigma=0.01, salt=3),
                                              **kw)
    try:
        loop.run()
    finally:
        arena.close()
    return loop, store, arena


@pytest.mark.slow
def test_the_loop_stops_clearly_worse_children_early_and_counts_the_saving(tmp_path):
    cfg = ProgramConfig(generations=5, population=6, cascade_min_pairs=6)
    loop, store, arena = _run(tmp_path, cfg, checkpoints=4)
    stops = [e for e in store.events(100_000) if e["kind"] == "cascade_stopped"]
    assert stops, "no child was stopped early"
    cands = {c.id: c for c in store.candidates()}
    evals = store.evaluations()
    for e in stops:
        data = json.loads(e["payload"])
        c = cands[e["candidate_id"]]
        assert c.status is Status.REJECTED and c.message.startswith("stopped at")
        assert data["saved_budget_s"] > 0 and data["fraction"] in (0.25, 0.5)
        seed = data["seed"]
        # the child's run and its parent's control on that seed were called off, not redone
        mine = [x for x in evals if x.candidate_id == c.id]
        assert [x.status for x in mine] == ["cancelled"]
        control = [x for x in evals if x.candidate_id == c.parent_id and x.seed == seed]
        assert all(x.status in ("cancelled", "evaluated") for x in control) and len(control) == 1
        assert c.archive_version >= 1  # never before there is a calibration
    assert arena.device_runs < arena.submitted  # stopped runs used part of their budget
    saved = device_time_saved(store)["stopped early by the evaluation cascade"]
    assert saved[0] == len(stops) and saved[1] == pytest.approx(sum(json.loads(e["payload"])["saved_budget_s"]
                                                                    for e in stops))
    assert "stopped early by the evaluation cascade" in summary_text(store)
    assert store.generations()[-1].generation == 5


@pytest.mark.slow
def test_without_enough_finished_pairs_or_when_off_nothing_is_stopped(tmp_path):
    for cfg in (ProgramConfig(generations=3, population=4, cascade_min_pairs=1000),
                ProgramConfig(generations=3, population=4, cascade_stop_p=0.0)):
        _, store, arena = _run(tmp_path / str(cfg.cascade_stop_p), cfg, checkpoints=4)
        assert not [e for e in store.events(100_000) if e["kind"] == "cascade_stopped"]
        assert arena.device_runs == arena.submitted


def test_a_child_that_saves_memory_is_never_stopped(tmp_path):
    """Behind on its claimed loss, but measured lower on memory: possibly a trade-off the
    archive wants, so the cascade leaves it to the race."""
    cfg = ProgramConfig(generations=3, population=6, cascade_min_pairs=4)
    loop, store, _ = _run(tmp_path, cfg, checkpoints=4)
    cascade, scorer = loop.cascade, loop.state.scorer()
    child = Candidate(id="probe", generation=4, idx=0, parent_id="root", persona="tuner", status=Status.RUNNING,
                      archive_version=3, commit="x", hypothesis="", model="")
    parent = points((0.25, 2.0), (0.5, 1.9))
    behind = points((0.25, 3.0), (0.5, 2.9))
    assert cascade.check(scorer, child, RunProgress(behind, 100.0), parent, 100.0, 5.0) is not None
    assert cascade.check(scorer, child, RunProgress(behind, 80.0), parent, 100.0, 5.0) is None
    assert cascade.check(scorer, child, RunProgress(points((0.25, 1.9), (0.5, 1.8)), 100.0), parent, 100.0,
                         5.0) is None  # ahead: never stopped
