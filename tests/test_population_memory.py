"""Research memory and training telemetry from a real store (SQLite) and real run logs,
and how both reach the prompt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agents.edits import apply_knobs
from agents.personas import load_personas
from agents.prompts import build_prompt
from agents.proposal import ProposalContext
from arena.records import RunResult, Status
from population import memory, telemetry
from population.program import ProgramConfig
from population.simulated import simulated_loop
from population.store import Candidate, Store, store_path

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()


def _add(store: Store, cid: str, parent: str | None, commit: str, final: Status, vals: dict[int, float],
         message: str = "", hypothesis: str = "", log_text: str = "", tmp: Path | None = None) -> None:
    store.add_candidate(Candidate(id=cid, generation=0 if parent is None else 1, idx=len(store.candidates()),
                                  parent_id=parent, persona="tuner", status=Status.PROPOSED, archive_version=0,
                                  commit=commit, hypothesis=hypothesis))
    store.set_status(cid, Status.RUNNING)
    for seed, v in vals.items():
        log_path = ""
        if log_text and tmp is not None:
            log_path = str(tmp / f"{cid}-{seed}.log")
            Path(log_path).write_text(log_text)
        e = store.start_evaluation(cid, seed, 1, "root" if parent is None else "initial")
        store.finish_evaluation(e, RunResult(cid, commit, seed, Status.EVALUATED, val_bpb=v, peak_mem_mb=300.0,
                                             training_seconds=40.0, wall_seconds=55.0, device_type="cpu",
                                             log_path=log_path, claimed={"num_steps": 200, "tokens_per_second": 9000.0}))
    if final == Status.CRASHED:
        store.set_status(cid, final, message)
        return
    store.set_status(cid, Status.EVALUATED)
    if final != Status.EVALUATED:
        store.set_status(cid, final, message)


def test_the_digest_groups_tries_by_idea_and_says_all_worse_in_one_line(tmp_path):
    files = {"r": TEMPLATE}
    for i, lr in enumerate((0.006, 0.009, 0.012)):
        files[f"lr{i}"] = apply_knobs(TEMPLATE, {"LEARNING_RATE": lr})
    files["deep"] = apply_knobs(TEMPLATE, {"DEPTH": 5})
    files["heads"] = apply_knobs(files["deep"], {"N_HEADS": 8})
    with Store.open(store_path(tmp_path)) as store:
        store.set_meta("noise_floor", {"val_std": 0.002})
        _add(store, "root", None, "r", Status.CONFIRMED, {0: 2.00, 1: 2.01, 2: 1.99})
        for i, d in enumerate((0.03, 0.05, 0.02)):
            _add(store, f"c{i}", "root", f"lr{i}", Status.REJECTED, {0: 2.00 + d, 1: 2.01 + d},
                 message="not better", hypothesis="raise the learning rate")
        _add(store, "c3", "root", "deep", Status.CONFIRMED, {0: 1.95, 1: 1.96, 2: 1.94})
        _add(store, "c4", "c3", "heads", Status.CRASHED, {}, message="Traceback...\nRuntimeError: bad shape")
        store.add_event("novelty_refused", "g1c5: repeat", 1, "c5", {"check": "same_knobs"})
        text = memory.digest(store, files.__getitem__, parent_id="c3")
    lines = text.splitlines()
    assert lines[0].startswith("5 children so far, 3 distinct ideas") and "refused 1 repeat" in lines[0]
    lr = next(ln for ln in lines if ln.startswith("- LEARNING_RATE up"))
    assert "3 tries (3 on this lineage), all 3 measured worse; 3 rejected" in lr
    assert "d val_bpb +0.0333 +- 0.0088 (6 paired seeds), d mem +0 MB" in lr
    deep = next(ln for ln in lines if ln.startswith("- DEPTH up"))
    assert "1 try (1 on this lineage), measured better; 1 confirmed" in deep
    heads = next(ln for ln in lines if ln.startswith("- N_HEADS up"))
    assert "1 crashed" in heads and "last failure: RuntimeError: bad shape" in heads
    assert lines.index(lr) < lines.index(heads)  # the parent's own lineage first, then the most tried


def test_the_digest_of_a_simulated_run_reads_git_and_keeps_to_an_archive_version(tmp_path):
    cfg = ProgramConfig(generations=2, population=3, seed=3)
    loop, store, repo, arena = simulated_loop(tmp_path / "run", cfg)
    try:
        loop.run()
        def read(c):
            return repo.read_file(c, "train.py")

        now = memory.digest(store, read, parent_id="root")
        first = memory.digest(store, read, parent_id="root", as_of=1)
        trials = memory.trials(store, read)
    finally:
        arena.close()
        store.close()
    assert len(trials) == 6 and all(t.idea != "no visible change" for t in trials)
    assert now.startswith("6 children so far") and first.startswith("3 children so far")
    assert all(ln.startswith("- ") for ln in now.splitlines()[1:])


def test_progress_lines_parse_and_the_parents_telemetry_labels_claims(tmp_path):
    log = ("device cpu, 0.90M parameters, budget 40s\n"
           "step 1 (0.0%) | loss: 5.5452 | tok/sec: 0 | remaining: 40s\n"
           "step 50 (25.0%) | loss: 3.1000 | tok/sec: 8000 | remaining: 30s\n"
           "noise from the candidate\n"
           "step 100 (50.0%) | loss: 2.6000 | tok/sec: 8100 | remaining: 20s\n"
           "step 150 (75.0%) | loss: nan | tok/sec: 8100 | remaining: 10s\n"
           "step 199 (99.0%) | loss: 2.2000 | tok/sec: 8200 | remaining: 0s\n")
    points = telemetry.parse_progress(log)
    assert [p.step for p in points] == [1, 50, 100, 150, 199] and points[1].fraction == 0.25
    assert points[2] == telemetry.ProgressPoint(100, 0.5, 2.6, 8100.0, 20.0)
    with Store.open(store_path(tmp_path)) as store:
        _add(store, "root", None, "r", Status.CONFIRMED, {0: 2.0, 1: 2.0}, log_text=log, tmp=tmp_path)
        t = telemetry.candidate_telemetry(store, "root", budget_s=40.0)
        assert telemetry.candidate_telemetry(store, "nobody") is None
    assert t is not None and t.n_runs == 2 and t.steps == 200 and t.peak_mem_mb == 300.0
    assert dict(t.curve)[0.25] == 3.1 and dict(t.curve)[0.5] == 2.6 and t.eval_wall_s == 15.0
    text = telemetry.render(t)
    assert "training loss at budget fractions (claimed by train.py): 25%: 3.100, 50%: 2.600" in text
    assert "peak memory (measured by the arena): 300 MB" in text and "9,000 tokens/s" in text
    assert telemetry.late_drop(t) is None and "converged" not in text  # the 75% point was nan
    steep = dataclasses.replace(t, curve=((0.5, 3.0), (0.75, 2.5), (1.0, 2.2)))
    assert telemetry.late_drop(steep) == pytest.approx(0.3 / 2.5)
    assert "still fell 12% over the last quarter" in telemetry.render(steep)
    flat = dataclasses.replace(t, curve=((0.75, 2.21), (1.0, 2.2)))
    assert "far from converged" not in telemetry.render(flat)


def test_memory_and_telemetry_reach_the_prompt_and_memory_is_trimmed_from_the_end():
    persona = load_personas({"model": "openai/x"})["optimizer-tuner"]
    mem = "\n".join(["12 children so far"] + [f"- IDEA_{i} up: 1 try, measured worse" for i in range(200)])
    ctx = ProposalContext(persona="optimizer-tuner", program="p", parent_id="root", parent_commit="0" * 40,
                          parent_train_py=TEMPLATE, memory=mem, telemetry="Parent root, over 3 run(s):")
    roomy = build_prompt(ctx, persona, "moves", context_window=32000, max_tokens=256).messages[1]["content"]
    assert "## Research memory" in roomy and "IDEA_199" in roomy and "## How the parent trained" in roomy
    tight = build_prompt(ctx, persona, "moves", context_window=2600, max_tokens=256)
    user = tight.messages[1]["content"]
    assert "IDEA_0 up" in user and "IDEA_199" not in user and any("memory lines" in d for d in tight.dropped)


class GatedKnobProposer:
    """The simulated knob proposer behind the real novelty gate: it records the context
    it got, and refuses its own repeats the way agents.proposer does."""

    def __init__(self) -> None:
        from population.simulated import KnobProposer

        self.inner = KnobProposer()
        self.contexts: list[ProposalContext] = []

    def propose(self, ctx: ProposalContext):
        from dataclasses import replace

        from agents.novelty import check

        self.contexts.append(ctx)
        out = self.inner.propose(ctx)
        refusal = check(ctx.parent_train_py, ctx.novelty)  # the parent itself: always a repeat
        return replace(out, refusals=(refusal,)) if refusal is not None and hasattr(out, "train_py") else out


def test_the_loop_gives_memory_and_novelty_to_the_proposer_and_counts_refusals(tmp_path):
    proposer = GatedKnobProposer()
    cfg = ProgramConfig(generations=2, population=2, seed=5, lookahead=0)
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg, proposer=proposer)
    try:
        loop.run()
        events = [e for e in store.events(500) if e["kind"] == "novelty_refused"]
        later = [c for c in proposer.contexts if c.memory]
    finally:
        arena.close()
        store.close()
    assert all(c.novelty is not None and len(c.novelty) >= 1 for c in proposer.contexts)
    assert later and later[-1].memory.startswith("2 children so far")  # generation 2 sees generation 1
    assert len(events) == len(proposer.contexts) == 4
    assert '"saved_runs": 1' in events[0]["payload"] and "repeats root" in events[0]["message"]


class RecordingProposer:
    """The simulated knob proposer, keeping every context it was given."""

    def __init__(self) -> None:
        from population.simulated import KnobProposer

        self.inner = KnobProposer()
        self.contexts: list[ProposalContext] = []

    def propose(self, ctx: ProposalContext):
        self.contexts.append(ctx)
        return self.inner.propose(ctx)


@pytest.mark.slow
def test_a_resumed_run_rebuilds_the_same_context_for_every_child(tmp_path):
    """Telemetry, memory and the novelty index are read as of the archive version a child
    was planned from: rebuilt after the run (its parents measured again, later children
    committed), each child's context is the one its proposer got."""
    proposer = RecordingProposer()
    cfg = ProgramConfig(generations=3, population=3, seed=3, lookahead=2)
    loop, store, _, arena = simulated_loop(tmp_path / "run", cfg, proposer=proposer)
    try:
        loop.run()
    finally:
        arena.close()
        store.close()
    resumed, store, _, arena = simulated_loop(tmp_path / "run", cfg)  # a fresh process on the same run
    try:
        st, planner = resumed.state, resumed.planner
        children = [c for c in st.in_plan_order() if c.parent_id is not None]
        rebuilt = [planner.build_context(c, planner.tried(c)) for c in children]
        # what an unpinned read would show now: the parents' later runs, every later program
        later = [(telemetry.candidate_telemetry(store, c.parent_id, cfg.budget_s),
                  telemetry.candidate_telemetry(store, c.parent_id, cfg.budget_s, as_of=c.archive_version))
                 for c in children]
    finally:
        arena.close()
        store.close()
    assert len(children) == len(proposer.contexts) == 9
    for ctx in rebuilt:
        assert ctx in proposer.contexts
    assert any(now != then for now, then in later), "no parent was measured again: the test proves nothing"
    assert any(ctx.telemetry and ctx.memory for ctx in rebuilt)
    last = rebuilt[-1]  # a child of the last generation does not see its own generation's later siblings
    assert not any(k.candidate_id == children[-1].id for k in last.novelty.by_code.values())
