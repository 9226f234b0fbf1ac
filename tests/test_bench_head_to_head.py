"""bench/head_to_head.py: the greedy agent's keep/discard rule, on the simulated arena.

Real parts: a real git repository, the real guards, the simulated arena (a noisy
synthetic landscape) and the deterministic knob proposer. No training, no LLM.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from agents.proposal import InvalidEdit
from arena.repo import ExperimentRepo
from population.simulated import SIM_TRAIN_PY, KnobProposer, Landscape, SimulatedArena, prepare_py_text

BENCH = Path(__file__).resolve().parent.parent / "bench" / "head_to_head.py"
_spec = importlib.util.spec_from_file_location("head_to_head", BENCH)
assert _spec and _spec.loader
h2h = importlib.util.module_from_spec(_spec)
sys.modules["head_to_head"] = h2h  # dataclasses look their module up
_spec.loader.exec_module(h2h)

PERSONAS = {"explorer": ("best", 1.0), "tuner": ("best", 1.0)}


class EveryOtherInvalid:
    """The knob proposer, but every second answer is an invalid edit."""

    def __init__(self) -> None:
        self.inner = KnobProposer(salt=3)
        self.calls = 0

    def propose(self, ctx):
        self.calls += 1
        if self.calls % 2 == 0:
            return InvalidEdit(ctx.parent_commit, ctx.persona, "test", "no edit in the reply")
        return self.inner.propose(ctx)


def _greedy(tmp_path: Path, runs: int, proposer, sigma: float = 0.02):
    repo = ExperimentRepo.create(tmp_path / "run", SIM_TRAIN_PY, prepare_py_text(), "+++\n+++\n")
    arena = SimulatedArena(lambda c: repo.read_file(c, "train.py"), slots=1,
                           landscape=Landscape(sigma=sigma, salt=7))
    try:
        res = h2h.run_greedy(repo, arena, proposer, PERSONAS, "", 8.0, lambda k: k <= runs,
                             seed_of=lambda k: 100 + k, salt=7)
    finally:
        arena.close()
    return repo, res


@pytest.mark.slow  # ~15 s on a busy 2-core machine (git commits and guards per child)
def test_greedy_keeps_only_a_lower_val_bpb_and_edits_the_best(tmp_path):
    repo, res = _greedy(tmp_path, 14, KnobProposer(salt=7))
    assert res.runs == 14 and res.device_s == 14 * 8.0
    assert [s.seed for s in res.steps] == [100 + k for k in range(14)]  # a fresh seed per run
    best_val, best_commit = res.steps[0].val_bpb, repo.root_commit
    for s in res.steps[1:]:
        assert repo.parents(s.commit) == [best_commit]  # every child edits the best so far
        lower = s.status == "evaluated" and s.val_bpb is not None and s.val_bpb < best_val
        assert s.kept == lower
        if s.kept:
            best_val, best_commit = s.val_bpb, s.commit
    assert 0 < res.kept < res.runs - 1  # both branches were taken
    assert res.best_commit == best_commit and res.best_val_bpb == best_val
    assert res.best_val_bpb == min(s.val_bpb for s in res.steps if s.kept)


def test_invalid_proposals_cost_no_runs(tmp_path):
    proposer = EveryOtherInvalid()
    _, res = _greedy(tmp_path, 6, proposer)
    assert res.runs == 6  # the baseline and five children
    assert res.proposals == proposer.calls == 9  # valid, invalid, ... valid: the fifth valid one ends it
    assert res.valid == 5 and res.proposals - res.valid == 4


def test_table_counts_wins(tmp_path):
    ours = h2h.OursResult("d", "g001c00", "abc", 1.0, 10, 6, 5, 1, 8.0, 100.0)
    rows = [h2h.RepeatResult(i, i, 2.0, o, g, ours, 10, 9, 9, 2, 80.0, 90.0, 1.9, (900000,))
            for i, (o, g) in enumerate([(1.8, 1.9), (1.95, 1.9), (math.nan, 1.9)])]
    text = h2h.table(rows)
    assert "ours lower than greedy in 1 of 3" in text
    assert "ours lower than the root in 2 of 3" in text
    assert "| mean | | 2.0000 | 1.8750 | 1.9000 |" in text


def test_results_json_round_trips_for_merge(tmp_path):
    import json
    from dataclasses import asdict

    ours = h2h.OursResult("d", "root", "abc", 1.0, 7, 2, 2, 0, 8.0, 100.0)
    rows = [h2h.RepeatResult(i, 3 + i, 2.0, 2.0, 1.9, ours, 7, 7, 6, 1, 56.0, 90.0, 1.9, (900000, 900001))
            for i in range(2)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps([asdict(x) for x in rows], default=str))
    assert h2h.load_results([path]) == rows
    assert h2h.main(["--merge", str(path)]) == 0
