"""The whole path for real: prepare -> template -> LLM proposal over HTTP -> arena
(worktree, sandboxed training, trusted evaluation) -> store -> archive -> export.

`evolve` runs as a subprocess on a tiny corpus with a 1-second budget; the LLM is a
scripted OpenAI-compatible server on 127.0.0.1 that answers with a knob edit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prepare
from agents.scripted_server import ScriptedLLMServer
from arena.sandbox import bwrap_path
from population.store import Store, store_path

ROOT = Path(__file__).resolve().parents[1]

HYPOTHESIS = "A shorter warm-down keeps the learning rate high for longer in a tiny budget."
KNOB_REPLY = json.dumps({"hypothesis": HYPOTHESIS, "changes": [{"name": "WARMDOWN_FRAC", "value": 0.2}]})
SEARCH_REPLACE_REPLY = (
    f"HYPOTHESIS: {HYPOTHESIS}\n\n"
    "<<<<<<< SEARCH\n"
    "WARMDOWN_FRAC = 0.4  # fraction of the budget at the end spent decaying it to zero\n"
    "=======\n"
    "WARMDOWN_FRAC = 0.2  # fraction of the budget at the end spent decaying it to zero\n"
    ">>>>>>> REPLACE\n"
)


def reply(request: dict) -> str:
    """Answer in the edit format the persona asked for: knobs come with a JSON schema."""
    return KNOB_REPLY if request.get("response_format") else SEARCH_REPLACE_REPLY


@pytest.mark.slow
@pytest.mark.parametrize("executor", [[], ["--ray"]], ids=["local", "ray"])
def test_evolve_runs_a_real_generation_end_to_end(tmp_path, executor):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"chapter{i:02d}.txt").write_text(f"Chapter {i}.\n" + "The quick brown fox jumps over the lazy dog.\n" * 60)
    data = tmp_path / "data"
    assert prepare.main(["--text", str(corpus), "--data-dir", str(data)]) == 0

    with ScriptedLLMServer([reply]) as llm:
        program = tmp_path / "program.md"
        program.write_text(
            "+++\n"
            "budget_s = 1\npopulation = 1\n"
            f'model = "openai/scripted"\napi_base = "{llm.api_base}"\n'
            "[seeds]\nroot = 2\ninitial = 1\nmax = 1\n"
            "[stop]\ngenerations = 1\n"
            "+++\n\nLower val_bpb on the CPU within the budget.\n"
        )
        env = dict(os.environ, EVOLVE_DATA=str(data), OPENAI_API_KEY="not-needed-locally")
        proc = subprocess.run(
            [sys.executable, "-m", "population.cli", "--program", str(program),
             "--run-dir", str(tmp_path / "run"), "--devices", "cpu", *executor,
             *([] if bwrap_path() else ["--unconfined"])],  # CI without bubblewrap consents
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert llm.requests, "the proposer never called the LLM"

    store = Store.open(store_path(tmp_path / "run"), readonly=True)
    try:
        candidates = {c.id: c for c in store.candidates()}
        evaluations = store.evaluations()
    finally:
        store.close()
    root = [c for c in candidates.values() if c.parent_id is None]
    children = [c for c in candidates.values() if c.parent_id is not None]
    assert len(root) == 1 and len(children) == 1
    child = children[0]
    assert child.status != "invalid_edit", child.message
    assert child.edit_format in ("knobs", "search_replace") and "warm-down" in child.hypothesis
    # every run was measured by the arena's evaluator, not read from the candidate's output
    measured = [e for e in evaluations if e.status == "evaluated"]
    assert {e.candidate_id for e in measured} == {root[0].id, child.id}
    assert all(0 < e.val_bpb < 8 and 0 < e.test_bpb < 8 and e.peak_mem_mb > 0 for e in measured)
    assert child.status in ("confirmed", "rejected")

    show = subprocess.run(["git", "show", child.commit, "--", "train.py"], cwd=tmp_path / "run",
                          capture_output=True, text=True, check=True).stdout
    assert "+WARMDOWN_FRAC = 0.2" in show
    exported = subprocess.run(
        [sys.executable, "-m", "population.cli", "export", "--candidate", child.id, "--format", "file",
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert exported.returncode == 0 and "WARMDOWN_FRAC = 0.2" in exported.stdout
