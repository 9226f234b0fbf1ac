"""Red team for the budget: candidates that train more than the budget allows, through a
real LocalArena (sandboxed where bubblewrap is installed), after the root has run.

- `pretrains_in_build_model` trains for 3x the budget (CPU seconds) inside build_model,
  before the clock starts; the evaluator's call of build_model (no EVOLVE_BUDGET_S there)
  does not, so it would otherwise pass every check;
- `ignores_the_clock` trains until its clock reads 3x the budget.
Both must be refused (status timeout, the CPU-time limit named, the allowance derived from
the root's measured start-up); an honest child on the same arena must be evaluated.
The table the report quotes comes from the printed rows (`pytest -s`).
"""

import pytest
from arena_helpers import TINY_TRAIN, USE_BWRAP, build_cache, make_repo

from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunRequest, Status

pytestmark = pytest.mark.slow
BUDGET = 5.0

PRETRAIN = TINY_TRAIN.replace(
    "def build_model(**kw):\n    return TinyModel(**kw)\n",
    '''def build_model(**kw):
    import os
    import time

    model = TinyModel(**kw)
    budget = os.environ.get("EVOLVE_BUDGET_S")
    if budget:  # training, not the evaluator: train before the clock exists
        opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        loader = prepare.TrainLoader(BATCH_SIZE, SEQ_LEN, seed=prepare.runtime().seed + 1)
        end = time.process_time() + 3 * float(budget)
        while time.process_time() < end:
            x, y = next(loader)
            loss = F.cross_entropy(model(x).view(-1, kw["vocab_size"]), y.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model
''',
)
IGNORES_CLOCK = TINY_TRAIN.replace(
    "while not clock.done and clock.steps < MAX_STEPS:",
    "while clock.elapsed() < 3 * rt.budget_s:",
)


@pytest.mark.timeout(1800)
def test_training_outside_the_budget_is_refused_and_honest_runs_pass(tmp_path):
    assert PRETRAIN != TINY_TRAIN and IGNORES_CLOCK != TINY_TRAIN
    data_dir = build_cache(tmp_path / "data")
    repo = make_repo(tmp_path / "run")
    commits = {
        "honest": repo.commit_candidate(
            repo.root_commit, TINY_TRAIN.replace("DIM = 32", "DIM = 24"), "honest"
        ),
        "pretrains_in_build_model": repo.commit_candidate(repo.root_commit, PRETRAIN, "a"),
        "ignores_the_clock": repo.commit_candidate(repo.root_commit, IGNORES_CLOCK, "b"),
    }
    with LocalArena(
        repo,
        data_dir,
        detect_slots("cpu:2"),
        mem_limit_mb=3000,
        use_bwrap=USE_BWRAP,
        startup_allowance_s=60,
        wall_factor=20.0,  # this test is about CPU time; a loaded CI machine is slow
        eval_timeout_s=300,
    ) as arena:
        arena.submit(RunRequest("root", repo.root_commit, 0, BUDGET))
        results = {r.candidate_id: r for r in arena.poll(900)}
        for name, sha in commits.items():
            arena.submit(RunRequest(name, sha, 0, BUDGET))
        while len(results) < 1 + len(commits):
            results.update((r.candidate_id, r) for r in arena.poll(900))
    for name, r in results.items():
        print(f"| {name} | {r.status.value} | {r.val_bpb} | {r.cpu_seconds} | "
              f"{r.training_seconds} | {r.message.splitlines()[0][:150] if r.message else ''} |")
    root = results["root"]
    assert root.status is Status.EVALUATED, root.message
    assert root.cpu_seconds > 0.5
    honest = results["honest"]
    assert honest.status is Status.EVALUATED, honest.message
    for name in ("pretrains_in_build_model", "ignores_the_clock"):
        r = results[name]
        assert r.status is Status.TIMEOUT and r.val_bpb is None, (name, r.status, r.message)
        assert "CPU-time" in r.message and "the root's measured start-up" in r.message, r.message
