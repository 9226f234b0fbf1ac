"""Preflight: one sandboxed CPU step of a child before it is queued; a failure goes back
to the model as a repair request. Real subprocesses, the real sandbox (bubblewrap when
installed), a real data cache and the real train_template.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from arena_helpers import PREPARE, USE_BWRAP, build_cache

from agents import build_proposer
from agents.edits import apply_knobs
from agents.personas import DEFAULT_PERSONAS
from agents.proposal import Proposal, ProposalContext
from agents.scripted_server import ScriptedLLMServer
from arena import preflight
from arena.sandbox import Sandbox
from population import telemetry

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()
pytestmark = pytest.mark.slow  # each case starts torch in a sandbox (seconds; more on a busy machine)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_cache(tmp_path_factory.mktemp("data") / "cache")


def test_the_template_passes_and_a_bad_head_shape_fails_with_its_error(data_dir):
    sandbox = Sandbox(4096, USE_BWRAP)
    ok = preflight.run(TEMPLATE, PREPARE, data_dir, sandbox)
    assert ok.ok and ok.error == "", ok.log
    bad = preflight.run(apply_knobs(TEMPLATE, {"N_HEADS": 3}), PREPARE, data_dir, sandbox)
    assert not bad.ok and bad.error.startswith("RuntimeError: shape") and "is invalid" in bad.error


def test_a_model_the_evaluator_could_not_use_fails(data_dir):
    short = TEMPLATE.replace("max_seq_len=prepare.SEQ_LEN", "max_seq_len=SEQ_LEN")  # trains, cannot evaluate
    result = preflight.run(short, PREPARE, data_dir, Sandbox(4096, USE_BWRAP))
    assert not result.ok and "size of tensor" in result.error


def test_a_child_that_hangs_is_stopped_at_the_time_limit(data_dir):
    hangs = TEMPLATE.replace("def main():\n", "def main():\n    while True:\n        pass\n")
    result = preflight.run(hangs, PREPARE, data_dir, Sandbox(4096, USE_BWRAP), timeout_s=5)
    assert not result.ok and "did not finish in 5 s" in result.error


def test_a_preflight_failure_is_a_repair_request_and_never_reaches_the_caller(data_dir):
    check = preflight.Preflight(PREPARE, data_dir, Sandbox(4096, USE_BWRAP))
    crash = ("HYPOTHESIS: three heads\n<<<<<<< SEARCH\nN_HEADS = 4  # attention heads (MODEL_DIM must divide "
             "by it)\n=======\nN_HEADS = 3\n>>>>>>> REPLACE\n")
    fixed = crash.replace("N_HEADS = 3", "N_HEADS = 8").replace("three", "eight")
    personas = {name: {"model": "openai/scripted"} for name in DEFAULT_PERSONAS if name != "random"}
    ctx = ProposalContext(persona="architect", program="p", parent_id="root", parent_commit="0" * 40,
                          parent_train_py=TEMPLATE)
    with ScriptedLLMServer([crash, fixed]) as srv:
        proposer = build_proposer({"api_base": srv.api_base, "personas": personas}, None, None, checks=[check])
        out = proposer.propose(ctx)
        repair = srv.requests[1]["messages"][-1]["content"]
    assert "failed a one-step trial run on CPU: RuntimeError: shape" in repair
    assert isinstance(out, Proposal) and "N_HEADS = 8" in out.train_py
    assert [r.kind for r in out.refusals] == ["preflight"] and not out.refusals[0].is_repeat


def test_the_template_prints_progress_lines_the_parser_reads(tmp_path, data_dir):
    work = tmp_path / "work"
    work.mkdir()
    small = apply_knobs(apply_knobs(TEMPLATE, {"DEPTH": 1, "MODEL_DIM": 32, "BATCH_SIZE": 4}), {"SEQ_LEN": 32})
    (work / "train.py").write_text(small)  # many short steps, even on a busy machine
    (work / "prepare.py").write_text(PREPARE)
    env = {**os.environ, "EVOLVE_BUDGET_S": "3", "EVOLVE_DEVICE": "cpu", "EVOLVE_DATA": str(data_dir),
           "EVOLVE_OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = telemetry.parse_progress(proc.stdout)
    assert len(points) >= 5, proc.stdout
    assert points[0].step >= 1 and points[-1].fraction > 0.8 and points[-1].tokens_per_s > 0
    assert [p.step for p in points] == sorted(p.step for p in points)
    claimed = json.loads((tmp_path / "out" / "claimed.json").read_text())
    assert claimed["num_steps"] >= points[-1].step
