"""When the evaluator starts its checker: with the scorer only when two workers surely fit."""

from argparse import Namespace

from arena.evaluate import EVALUATOR_MB, WORKER_BASE_MB, two_fit_at_start


def _args(tmp_path, device="cpu", mem_limit_mb=16384):
    return Namespace(out=str(tmp_path), device=device, mem_limit_mb=mem_limit_mb)


def test_two_workers_start_together_under_a_roomy_ceiling(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\0" * 2**20)
    assert two_fit_at_start(_args(tmp_path))
    assert two_fit_at_start(_args(tmp_path, device="cuda", mem_limit_mb=64 * 1024))


def test_a_tight_ceiling_or_a_large_checkpoint_waits_for_the_scorer(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\0" * 2**20)
    tight = 2 * (2 * (WORKER_BASE_MB["cpu"] + 3) + EVALUATOR_MB) - 1
    assert not two_fit_at_start(_args(tmp_path, mem_limit_mb=tight))
    assert not two_fit_at_start(_args(tmp_path, device="cuda", mem_limit_mb=8192))
    with open(tmp_path / "model.pt", "r+b") as f:
        f.truncate(4 * 2**30)  # sparse: a 4 GiB checkpoint
    assert not two_fit_at_start(_args(tmp_path, mem_limit_mb=16384))


def test_no_checkpoint_means_no_early_start(tmp_path):
    assert not two_fit_at_start(_args(tmp_path))
