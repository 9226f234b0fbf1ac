"""Scoring: one function gives a candidate's numbers to the loop, the TUI and the report."""

from __future__ import annotations

import statistics

import pytest

from arena.records import RunResult, Status
from population import noise
from population.archive import Point
from population.program import ProgramConfig
from population.report import status_text
from population.scoring import RacePolicy, Scorer
from population.simulated import simulated_loop
from population.store import Candidate, GenerationRecord, Purpose, Store, store_path
from tui.snapshot import read_snapshot


@pytest.mark.slow
def test_tui_report_and_loop_agree_on_every_score_of_a_real_run(tmp_path):
    cfg = ProgramConfig(generations=3, population=4, rescore_every=2)
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg)
    loop.run()
    arena.close()
    v = store.last_generation()
    members = [Point.from_row(r) for r in store.generations()[-1].archive]
    assert any(p.candidate_id != "root" for p in members), "nothing entered the archive: the test shows nothing"
    loop_scores = {p.candidate_id: loop.state.scorer().score(p.candidate_id, v) for p in members}
    report = status_text(store)
    store.close()
    with Store.open(store_path(tmp_path / "run"), readonly=True) as reader:
        fresh = Scorer.from_store(reader)
    snap = read_snapshot(tmp_path / "run")
    tui_archive = {r.candidate_id: r for r in snap.archive}
    for p in members:
        ours = fresh.score(p.candidate_id, v)
        assert ours == p == loop_scores[p.candidate_id]  # stored archive row, reader and loop
        row = snap.candidate(p.candidate_id)
        assert row.summary.val_mean == pytest.approx(p.val_bpb, abs=1e-12)  # the TUI's population table
        assert row.summary.n_seeds == p.n_seeds and row.summary.mem_mean == pytest.approx(p.peak_mem_mb)
        assert tui_archive[p.candidate_id].val_bpb == p.val_bpb  # the TUI's archive table
        assert f"{p.candidate_id:10s} val_bpb {p.val_bpb:.4f} +- {p.val_bpb_std:.4f}" in report


def _add_run(s: Store, cid: str, seed: int, generation: int, purpose: Purpose, val: float, mem: float = 100.0,
             status: Status = Status.EVALUATED) -> None:
    e = s.start_evaluation(cid, seed, generation, purpose)
    s.finish_evaluation(e, RunResult(cid, "abc", seed, status, val_bpb=val if status == Status.EVALUATED else None,
                                     peak_mem_mb=mem, device_type="cpu"))


def _family(tmp_path, child_diffs: list[float], parent_offset: float = 0.0) -> Scorer:
    """A root on 3 seeds and one child of generation 1 raced against root controls."""
    s = Store.open(store_path(tmp_path))
    s.set_meta("device_type", "cpu")
    s.set_meta("noise_floor", {"val_std": 0.01, "mem_std": 1.0, "n_seeds": 3, "val_mean": 1.0, "mem_mean": 100.0})
    s.add_candidate(Candidate("root", 0, 0, None, "root", Status.CONFIRMED, -1))
    s.add_candidate(Candidate("c", 1, 0, "root", "tuner", Status.EVALUATED, 0))
    for k, val in enumerate([0.99, 1.0, 1.01]):
        _add_run(s, "root", noise.root_seed(k), 0, Purpose.ROOT, val)
    for r, d in enumerate(child_diffs):
        seed = noise.round_seed(1, 0, r)
        ctrl = 1.0 + parent_offset + 0.003 * r  # load drift moves both runs of a round together
        _add_run(s, "root", seed, 1, Purpose.PAIR, ctrl)
        _add_run(s, "c", seed, 1, Purpose.INITIAL if r == 0 else Purpose.RACE, ctrl + d, mem=90.0)
    s.finish_generation(GenerationRecord(0, 0.0, 1.0, [], {}, {}))
    scorer = Scorer.from_store(s)
    s.close()
    return scorer


def test_a_childs_score_is_its_parents_plus_its_posterior_gain_so_drift_cancels(tmp_path):
    a = _family(tmp_path / "a", [-0.02, -0.02])
    b = _family(tmp_path / "b", [-0.02, -0.02], parent_offset=0.3)  # the same child under heavy load
    pa, pb = a.score("c", 1), b.score("c", 1)
    root = a.score("root", 1)
    assert root.val_bpb == pytest.approx(1.0) and root.n_seeds == 5  # controls count for its spread and memory
    post = a.gain("c", a.model(0), 1)
    assert pa.val_bpb == pytest.approx(root.val_bpb + post.mean)
    assert -0.02 < post.mean < 0  # shrunk towards the prior
    assert pa.val_bpb == pytest.approx(pb.val_bpb)  # load during its rounds does not change its score
    assert pa.peak_mem_mb == 90.0 and pa.val_bpb_se > root.val_bpb_se
    assert pa.val_bpb_std == pytest.approx(statistics.stdev([0.98, 0.983]))


def test_racing_needs_two_val_seeds_and_stops_hopeless_children(tmp_path):
    policy = RacePolicy(initial=1, per_round=1, max_seeds=4, accept_p=0.04, futility_p=0.5)
    one = _family(tmp_path / "one", [-0.2]).race("c", policy, mem_margin=50.0)
    assert not one.done and one.rounds == 2  # clearly better, but one val seed is not enough
    two = _family(tmp_path / "two", [-0.2, -0.21]).race("c", policy, mem_margin=50.0)
    assert two.done and two.accepted
    worse = _family(tmp_path / "worse", [0.03]).race("c", policy, mem_margin=50.0)
    assert worse.done and not worse.accepted  # futile after one round
    unsure = _family(tmp_path / "unsure", [-0.004, 0.002, -0.003, 0.001]).race("c", policy, mem_margin=50.0)
    assert unsure.done and not unsure.accepted and unsure.rounds == 4  # out of seeds
