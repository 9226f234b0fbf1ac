"""Red team of the trusted evaluator: hostile train.py files that cheat on the metric.

Each file in tests/redteam_models.py is a whole train.py that lowers its val_bpb by a
trick instead of by predicting unseen text better (a look-ahead hidden under huge
logits, memoized answers, a bigram cache of the evaluation text, a leak from the next
row, a model that is honest only on random tokens or in full batches). On the arena
before issue 8 every one of them passed the checks and was evaluated, most with a far
better score than the honest model's (`bench/redteam_eval.py --code <old checkout>`
prints that table); here each must be refused, through a real
LocalArena (sandboxed where bubblewrap is installed) and through the real `evolve` loop
with a scripted LLM sending the whole file.

The first tests drive the checks in-process (fast): what the checker is sent, and that
a fresh checker catches what one long-lived process would not.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from arena_helpers import USE_BWRAP, make_repo
from redteam_models import HONEST, HOSTILE, corpus

import prepare
from arena.evaluate import BehaviourChecks, NotCausal

ROOT = Path(__file__).resolve().parents[1]
T = 32


def scored_batches(checks, model, tokens, n_rows=16):
    """Score `tokens` with `model` through evaluate_bpb, checks observing."""
    checks.start_split("val", len(prepare.eval_windows(len(tokens), T)), n_rows)
    return prepare.evaluate_bpb(model, tokens, np.ones(256), seq_len=T, batch_size=8,
                                seed=1, observe=checks)


class Recorder:
    """A causal model (logits from the current token) that keeps every batch it is sent."""

    def __init__(self):
        self.sent = []

    def __call__(self, idx):
        self.sent.append(idx.clone())
        return torch.nn.functional.one_hot(idx, 256).float()


def test_check_rows_come_from_every_batch_and_only_train_text_is_added():
    train = (np.arange(5000) * 7 % 251).astype(np.uint16) + 3  # distinctive "train" text
    val = np.random.default_rng(0).integers(0, 200, 2000).astype(np.uint16)
    checks = BehaviourChecks(prepare, train, 256, random.Random(0), prepare.CHECK_TOLERANCE)
    scorer, checker = Recorder(), Recorder()
    scored_batches(checks, scorer, val, n_rows=40)
    assert checks.run(checker, 8) == 40
    scored_rows = {tuple(r.tolist()): i for i, b in enumerate(scorer.sent) for r in b}
    train_text = bytes(np.asarray(train, dtype=np.uint8))
    from_batches, whole = set(), 0
    for batch in checker.sent:
        for row in batch:
            # each row is a scored window up to some cut, then train text (never val/test)
            cut = max(c for c in range(T) if any(k[: c + 1] == tuple(row[: c + 1].tolist()) for k in scored_rows))
            match = next(k for k in scored_rows if k[: cut + 1] == tuple(row[: cut + 1].tolist()))
            from_batches.add(scored_rows[match])
            whole += cut == T - 1
            assert bytes(row[cut + 1 :].to(torch.uint8).tolist()) in train_text
    assert whole >= len(checker.sent)  # at least one window per check batch is sent whole
    assert len(from_batches) > len(checker.sent)  # check batches mix rows of several scored batches


class Peeker:
    """Looks one token ahead; `memo` keeps its answers per row prefix across calls."""

    def __init__(self, memo=False):
        self.memo = {} if memo else None

    def __call__(self, idx):
        nxt = torch.roll(idx, -1, dims=1)
        if self.memo is not None:
            for r in range(idx.shape[0]):
                for t in range(idx.shape[1]):
                    key = tuple(idx[r, : t + 1].tolist())
                    nxt[r, t] = self.memo.setdefault(key, int(nxt[r, t]))
        return torch.nn.functional.one_hot(nxt, 256).float() * 8


@pytest.mark.parametrize("memo", [False, True])
def test_a_fresh_checker_catches_a_look_ahead_that_the_same_process_hides(memo):
    train = (np.arange(5000) % 97).astype(np.uint16)
    val = (np.arange(3000) * 13 % 211).astype(np.uint16)
    checks = BehaviourChecks(prepare, train, 256, random.Random(1), prepare.CHECK_TOLERANCE)
    model = Peeker(memo)
    bpb = scored_batches(checks, model, val)
    assert bpb.bpb < 0.5  # the cheat pays, if nobody looks
    if memo:  # the old arrangement: the same process answers the re-sent rows
        assert checks.run(model, 8) == 16
    with pytest.raises(NotCausal, match="on real text .* fresh model process"):
        checks.run(Peeker(memo), 8)


def test_an_honest_model_passes_every_check_on_a_fresh_process():
    train = (np.arange(5000) % 97).astype(np.uint16)
    val = (np.arange(3000) * 13 % 211).astype(np.uint16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 16), torch.nn.Linear(16, 256))
    checks = BehaviourChecks(prepare, train, 256, random.Random(2), prepare.CHECK_TOLERANCE)
    with torch.no_grad():
        scored_batches(checks, model, val)
        twin = torch.nn.Sequential(torch.nn.Embedding(256, 16), torch.nn.Linear(16, 256))
        twin.load_state_dict(model.state_dict())
        assert checks.run(twin, 8) == 16


# ---------------------------------------------------------------------------
# Through the real arena


@pytest.fixture(scope="module")
def arena_results(tmp_path_factory):
    from arena.devices import detect_slots
    from arena.local import LocalArena
    from arena.records import RunRequest

    tmp = tmp_path_factory.mktemp("redteam")
    prepare.build_cache(tmp / "data", corpus(), "text", "byte")
    repo = make_repo(tmp / "run", HONEST)
    sources = {"honest": HONEST, **HOSTILE}
    commits = {n: repo.commit_candidate(repo.root_commit, s, n) for n, s in sources.items()}
    results = {}
    with LocalArena(repo, tmp / "data", detect_slots("cpu:2"), mem_limit_mb=3000,
                    use_bwrap=USE_BWRAP, eval_timeout_s=300) as arena:
        for name, sha in commits.items():
            arena.submit(RunRequest(name, sha, 0, 1.0))
        while len(results) < len(commits):
            for r in arena.poll(1.0):
                results[r.candidate_id] = r
    return results


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the module's arena runs 8 candidates; minutes on a busy 2-core machine
def test_the_honest_model_is_evaluated(arena_results):
    r = arena_results["honest"]
    assert r.status.value == "evaluated", r.message
    assert 0 < r.val_bpb < 8


REFUSED = {
    "offset_1e4_peeker": ("contract_error", "logits must lie within"),
    "spike_1e7_peeker": ("contract_error", "logits must lie within"),
    "memoizer": ("causality_violation", "fresh model process"),
    "stateful_cache": ("causality_violation", "fresh model process"),
    "cross_row_leak": ("causality_violation", "changed when later tokens changed"),
    "text_only_peeker_with_memory": ("causality_violation", "on real text"),
    "small_batch_peeker": ("causality_violation", "on real text"),
}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_cheat_is_refused_by_the_arena(arena_results, name):
    assert set(REFUSED) == set(HOSTILE)
    r = arena_results[name]
    status, words = REFUSED[name]
    assert r.status.value == status and r.val_bpb is None and r.test_bpb is None, (r.status, r.message)
    assert words in r.message


# ---------------------------------------------------------------------------
# Through the real loop: a misbehaving LLM sends whole hostile files


LOOP_CHEATS = ("offset_1e4_peeker", "memoizer", "text_only_peeker_with_memory")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_evolve_confirms_no_cheat_sent_by_the_llm(tmp_path):
    from agents.scripted_server import ScriptedLLMServer
    from population.store import Store, store_path

    data = tmp_path / "data"
    prepare.build_cache(data, corpus(20, 4000), "text", "byte")
    replies = [f"HYPOTHESIS: {name} predicts better.\n\n```python\n{HOSTILE[name]}```\n"
               for name in LOOP_CHEATS]
    with ScriptedLLMServer(replies) as llm:
        program = tmp_path / "program.md"
        program.write_text(
            "+++\n"
            f"budget_s = 1\npopulation = {len(LOOP_CHEATS)}\n"
            f'model = "openai/scripted"\napi_base = "{llm.api_base}"\n'
            "[seeds]\nroot = 2\ninitial = 1\nmax = 2\n"
            "[stop]\ngenerations = 1\n"
            "+++\n\nLower val_bpb on the CPU within the budget.\n"
        )
        # The root is the tests' tiny model (seconds to train even on a busy machine):
        # evolve takes train_template.py from the first directory on its path, here cwd.
        project = tmp_path / "project"
        project.mkdir()
        (project / "train_template.py").write_text(HONEST)
        env = dict(os.environ, EVOLVE_DATA=str(data), OPENAI_API_KEY="not-needed-locally",
                   PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-m", "population.cli", "--program", str(program),
             "--run-dir", str(tmp_path / "run"), "--devices", "cpu"],
            cwd=project, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len(llm.requests) >= len(LOOP_CHEATS)
    store = Store.open(store_path(tmp_path / "run"), readonly=True)
    try:
        candidates = store.candidates()
        evaluations = store.evaluations()
        archived = {r["candidate_id"] for g in store.generations() for r in g.archive}
    finally:
        store.close()
    children = [c for c in candidates if c.parent_id is not None]
    assert len(children) == len(LOOP_CHEATS)
    for child in children:
        assert child.status.value in ("causality_violation", "contract_error"), (child.status, child.message)
        runs = [e for e in evaluations if e.candidate_id == child.id]
        assert runs and all(e.val_bpb is None for e in runs)
        assert child.id not in archived
    root = [c for c in candidates if c.parent_id is None]
    assert archived == {root[0].id}
    root_py = subprocess.run(["git", "show", f"{root[0].commit}:train.py"], cwd=tmp_path / "run",
                             capture_output=True, text=True, check=True).stdout
    assert root_py == HONEST
