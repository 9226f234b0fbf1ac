"""Benchmark: proposals from the embedded models (Qwen2.5-Coder 0.5B / 1.5B) and the random baseline.

`--proposer small|large|random` picks the proposer: the embedded 0.5B or 1.5B model
(llama.cpp, N threads, the typed move menu of agents.moves) or the random-move baseline
(no LLM). It asks the three built-in personas in turn for N proposals on
train_template.py. As in the loop, each prompt lists the hypotheses already tried, and
the novelty gate (agents.novelty) knows the parent and every valid child so far, so a
repeat is refused and goes back to the model. It prints per proposal: latency, tokens,
valid or not, the hypothesis or the reason, the constants changed, the gate's
refusals and the rubric's verdict (agents.rubric: does the hypothesis name what
changed, in the right direction, and nothing else); then:

- `valid_share`: proposals that ended as a valid child;
- `duplicate_share`: children the novelty gate refused as repeats, of all children
  the proposer produced (valid ones plus every refused one on the way);
- `hypothesis_match_share`: valid children whose hypothesis matches the edit (rubric).

`--out DIR` writes `proposals.json` and every valid child as `child_XX.py`, for
`--arena` (below) or for inspection.

`--arena DIR_WITH_PROPOSALS` (second stage) runs the root on several seeds and each
valid child on the same seeds through the real arena (arena.LocalArena) with a short
budget, and reports how many children differ from the root beyond the noise floor
(paired t-test on the same seeds, scipy). It needs the prepared data (`evolve prepare`).

Usage:
    python bench/proposals.py --proposer small --n 6 --threads 2 --out /tmp/bench_small
    python bench/proposals.py --proposer random --n 20 --out /tmp/bench_random
    python bench/proposals.py --arena /tmp/bench_small --budget 20 --seeds 3

It measures; it decides nothing and writes nothing outside --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROGRAM = (
    "Find a train.py that reaches a lower val_bpb on this CPU within the fixed training "
    "budget. Small, testable changes; one idea per candidate."
)


def changed_constants(parent: str, child: str) -> list[str]:
    from agents.edits import find_knobs

    a, b = find_knobs(parent), find_knobs(child)
    return [f"{n}: {a[n].source} -> {b[n].source}" for n in a if n in b and a[n].source != b[n].source]


_MOVE_PREFIX = re.compile(
    r"^(scale \S+ by \S+ \(.*?\)|set \S+ .*? -> \S+|swap the optimizer: OPTIMIZER \S+ -> \S+|"
    r"(add|remove) a block: DEPTH .*? -> \d+|change the MLP activation \S+ -> \S+)(: |$)")


def model_words(hypothesis: str) -> str:
    """The model's own words of a move hypothesis (without the move's generated description)."""
    m = _MOVE_PREFIX.match(hypothesis)
    return hypothesis[m.end():] if m else hypothesis


def run_proposals(args: argparse.Namespace) -> int:
    import contextlib

    from agents import build_proposer, rubric
    from agents.llm import LLMCallRecord
    from agents.local_model import LOCAL_MODEL_CHOICES, EmbeddedModel
    from agents.novelty import NoveltyIndex
    from agents.proposal import InvalidEdit, ProposalContext

    template = (ROOT / "train_template.py").read_text()
    records: list[LLMCallRecord] = []
    personas = ["optimizer-tuner", "architect", "bug-hunter"]
    rows = []
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for stale in Path(args.out).glob("child_*.py"):  # from an earlier run
            stale.unlink()
        (Path(args.out) / "parent.py").write_text(template)  # the arena stage's root
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.proposer == "random":
            proposer = build_proposer({"model": "random"}, records.append, cost_ceiling_usd=None)
            model_name = "random"
        else:
            m = stack.enter_context(EmbeddedModel(LOCAL_MODEL_CHOICES[args.proposer], n_threads=args.threads))
            proposer = build_proposer({}, records.append, cost_ceiling_usd=None, embedded=m, max_retries=1)
            model_name = m.alias
        startup = time.monotonic() - t_start
        tried: list[str] = []
        known = [("root", template, "the parent")]
        for i in range(args.n):
            persona = personas[i % len(personas)]
            ctx = ProposalContext(
                persona=persona, program=PROGRAM, parent_id="root", parent_commit="0" * 40,
                parent_train_py=template, tried=list(reversed(tried))[:10], noise_floor=args.noise_floor,
                novelty=NoveltyIndex.build(known),
            )  # fmt: skip
            n_rec = len(records)
            t0 = time.monotonic()
            out = proposer.propose(ctx)
            latency = time.monotonic() - t0
            calls = records[n_rec:]
            valid = not isinstance(out, InvalidEdit)
            verdict = rubric.judge(template, out.train_py, out.hypothesis) if valid else None
            own = rubric.judge(template, out.train_py, model_words(out.hypothesis)) if valid else None
            row = {
                "i": i,
                "persona": persona,
                "latency_s": round(latency, 2),
                "llm_calls": len(calls),
                "prompt_tokens": sum(r.prompt_tokens for r in calls),
                "completion_tokens": sum(r.completion_tokens for r in calls),
                "valid": valid,
                "hypothesis": out.hypothesis,
                "reason": "" if valid else out.reason,
                "changes": changed_constants(template, out.train_py) if valid else [],
                "repeats_refused": sum(r.is_repeat for r in out.refusals),
                "other_refusals": sum(not r.is_repeat for r in out.refusals),
                "hypothesis_matches": bool(verdict and verdict.matches),
                "rubric_problems": list(verdict.problems) if verdict else [],
                # the same rubric on the model's own words only (moves: without the generated prefix)
                "own_words_match": bool(own and own.matches),
            }
            if valid:
                tried.append(out.hypothesis)
                known.append((f"child_{i:02d}", out.train_py, "proposed"))
                if args.out:
                    (Path(args.out) / f"child_{i:02d}.py").write_text(out.train_py)
            else:
                tried.append(out.hypothesis or "(invalid reply)")
            rows.append(row)
            status = "VALID  " if valid else "INVALID"
            detail = "; ".join(row["changes"]) if valid else row["reason"][:140]
            match = "" if not valid else (" match" if row["hypothesis_matches"] else
                                          f" MISMATCH ({'; '.join(row['rubric_problems'])[:100]})")
            print(
                f"{i:2d} {persona:16s} {latency:6.1f}s calls={row['llm_calls']} p={row['prompt_tokens']:4d} "
                f"c={row['completion_tokens']:3d} repeats={row['repeats_refused']} {status} {detail}{match}\n"
                f"     hypothesis: {row['hypothesis'][:160]}",
                flush=True,
            )
    lat = [r["latency_s"] for r in rows]
    n_valid = sum(r["valid"] for r in rows)
    repeats = sum(r["repeats_refused"] for r in rows)
    produced = n_valid + repeats + sum(r["other_refusals"] for r in rows)
    gen_tok = sum(r["completion_tokens"] for r in rows)
    summary = {
        "proposer": args.proposer,
        "model": model_name,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg()[0],
        "server_startup_s": round(startup, 2),
        "n": len(rows),
        "valid": n_valid,
        "valid_share": round(n_valid / len(rows), 3) if rows else 0.0,
        "children_produced": produced,
        "repeats_refused": repeats,
        "duplicate_share": round(repeats / produced, 3) if produced else 0.0,
        "hypothesis_matches": sum(r["hypothesis_matches"] for r in rows),
        "hypothesis_match_share": round(sum(r["hypothesis_matches"] for r in rows) / n_valid, 3) if n_valid else 0.0,
        "own_words_match_share": round(sum(r["own_words_match"] for r in rows) / n_valid, 3) if n_valid else 0.0,
        "latency_mean_s": round(statistics.mean(lat), 2),
        "latency_median_s": round(statistics.median(lat), 2),
        "latency_max_s": round(max(lat), 2),
        "completion_tokens_per_s": round(gen_tok / sum(lat), 2) if sum(lat) else 0.0,
        "distinct_valid_edits": len({tuple(r["changes"]) for r in rows if r["valid"]}),
    }
    print("---")
    for k, v in summary.items():
        print(f"{k}: {v}")
    if args.out:
        (Path(args.out) / "proposals.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


def run_arena(args: argparse.Namespace) -> int:
    """Root and each valid child on the same seeds through the real arena."""
    import tempfile

    from scipy import stats

    from arena import ExperimentRepo, LocalArena, RunRequest, detect_slots
    from arena.records import Status

    src = Path(args.arena)
    children = sorted(src.glob("child_*.py"))
    if args.only:
        wanted = set(args.only.split(","))
        children = [c for c in children if c.stem in wanted]
    if not children:
        print(f"no child_*.py in {src}", file=sys.stderr)
        return 1
    import prepare

    data_dir = Path(os.environ["EVOLVE_DATA"]) if os.environ.get("EVOLVE_DATA") else prepare.default_data_dir()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-proposals-"))
    # the root is the file the children were proposed from (saved by the first stage)
    parent = src / "parent.py"
    template = parent.read_text() if parent.exists() else (ROOT / "train_template.py").read_text()
    repo = ExperimentRepo.create(run_dir / "run", template, (ROOT / "prepare.py").read_text(), "# bench\n")
    commits = {"root": repo.root_commit}
    seen: dict[str, str] = {}
    for c in children:
        text = c.read_text()
        if text in seen:  # the same edit proposed twice is measured once
            print(f"{c.stem}: same file as {seen[text]}, measured once")
            continue
        seen[text] = c.stem
        if len(commits) > args.max_children:
            print(f"{c.stem}: left out (--max-children {args.max_children})")
            continue
        commits[c.stem] = repo.commit_candidate(repo.root_commit, text, f"bench {c.stem}")
    children = [c for c in children if c.stem in commits]
    seeds = list(range(args.seeds))
    arena = LocalArena(repo, data_dir, detect_slots(None))
    results: dict[str, dict[int, float | None]] = {k: {} for k in commits}
    statuses: dict[str, set[str]] = {k: set() for k in commits}
    try:
        # seed-major order: the runs compared with each other run close together in time,
        # so a change in machine load hits root and children alike
        for s in seeds:
            for name, commit in commits.items():
                arena.submit(RunRequest(candidate_id=name, commit=commit, seed=s, budget_s=args.budget))
        pending = len(commits) * len(seeds)
        while pending:
            for r in arena.poll(timeout=5.0):
                pending -= 1
                results[r.candidate_id][r.seed] = r.val_bpb if r.status == Status.EVALUATED else None
                statuses[r.candidate_id].add(r.status.value)
                print(f"{r.candidate_id} seed {r.seed}: {r.status.value} val_bpb={r.val_bpb} {r.message[:80]}", flush=True)
    finally:
        arena.close()
    root = [results["root"].get(s) for s in seeds]
    root_ok = [v for v in root if v is not None]
    noise = statistics.stdev(root_ok) if len(root_ok) > 1 else float("nan")
    print("---")
    print(f"root val_bpb: {statistics.mean(root_ok):.4f} ± {noise:.4f} over {len(root_ok)} seeds (budget {args.budget}s)")
    beyond = 0
    for name in commits:
        if name == "root":
            continue
        pairs = [(results[name].get(s), results["root"].get(s)) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if len(pairs) < 2:
            print(f"{name}: {sorted(statuses[name])} (not measured on enough seeds)")
            continue
        diffs = [a - b for a, b in pairs]
        p = stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue
        sig = p < 0.05
        beyond += sig
        print(f"{name}: mean change {statistics.mean(diffs):+.4f} (p={p:.3f}) {'BEYOND NOISE' if sig else 'within noise'}")
    print(f"children beyond the noise floor (paired t-test p<0.05): {beyond} of {len(children)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--proposer", choices=("small", "large", "random"), default="small",
                    help="embedded 0.5B (small), 1.5B (large), or the random-move baseline")
    ap.add_argument("--noise-floor", type=float, default=None)
    ap.add_argument("--out", default=None, help="directory for proposals.json and child_XX.py")
    ap.add_argument("--arena", default=None, help="second stage: directory written by --out")
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-children", type=int, default=10)
    ap.add_argument("--only", default=None, help="comma-separated child names, e.g. child_00,child_04")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_arena(args) if args.arena else run_proposals(args)


if __name__ == "__main__":
    sys.exit(main())
