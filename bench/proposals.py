"""Benchmark: proposals from the embedded models (Qwen2.5-Coder 0.5B / 1.5B) and the random baseline.

**Proposal stage.** `--proposer small|large|random` picks the proposer: the embedded 0.5B
or 1.5B model (llama.cpp, N threads, the typed move menu of agents.moves) or the
random-move baseline (no LLM). It asks the three built-in personas in turn for N
proposals on train_template.py. As in the loop, each prompt lists the hypotheses
already tried, the novelty gate (agents.novelty) knows the parent and every valid child
so far, `--parent-log` gives the parent's telemetry (population.telemetry) from its run
logs as the loop does, and (unless `--no-preflight`) every child runs one sandboxed CPU step
(arena.preflight) before it is accepted; a refusal goes back to the model. It prints
per proposal: latency, tokens, valid or not, the hypothesis or the reason, the
constants changed, the gate's refusals and the rubric's verdict; then:

- `valid_share`: proposals that ended as a valid child;
- `duplicate_share`: children the novelty gate refused as repeats, of all children
  the proposer produced (valid ones plus every refused one on the way);
- `hypothesis_match_share`: valid children whose hypothesis matches the edit, judged by
  the fixed rubric of agents.rubric (written out in its docstring): the hypothesis names
  every changed constant or definition (by name or a listed alias), names no unchanged
  constant by its UPPER_CASE name, and any direction word near a changed number agrees
  with the change. For move replies the move's generated description is part of the
  hypothesis, so `own_words_match_share` applies the same rubric to the model's own words.

`--out DIR` writes `parent.py`, `proposals.json` and every valid child as `child_XX.py`
(as soon as it is accepted). The directory's name is the proposer's label in the arena stage.

**Arena stage.** `--arena DIR [DIR ...] --results FILE` measures the children of every
directory (same parent.py) through the real arena (arena.LocalArena: sandboxed, the
CPU-time budget of arena.budget, so scores do not depend on machine load; wall times
do). The root runs `--replicates` times on each of `--seeds` seeds; each child runs
once on each seed. Children are picked up as the proposal stage writes them, the
proposers in turn, every child on seed 0 before later seeds (breadth first, so a stage
stopped early has seed 0 for all); at most `--max-children` per proposer. Every run is
appended to FILE (JSON lines) at once, and a restarted stage skips the runs FILE has.
The evaluation splits are capped at `--eval-kib` KiB (a prepared copy of the data; the
root and its children are scored on the same text), since scoring is most of a short
CPU run's cost.

**Beats its parent beyond the noise floor**, precisely: for seed s let R_s be the mean
val_bpb of the root's replicates on s, and d = mean over the seeds measured of
(child_s - R_s) (lower is better). The paired noise sd is the sd of the difference of
two runs of the same program on the same seed, estimated as sqrt(2) x the root's
within-seed replicate sd, pooled over seeds (seeds x (replicates - 1) degrees of
freedom). A child beats its parent when d < -k x that sd (`--k`, default 2), and is
worse beyond the noise when d > +k x sd. `--seeds 1` in `--table` judges on seed 0
alone. The table also gives the share with d < 0, the median d, and a one-sided
Mann-Whitney test of each LLM's d against the random baseline's.

Usage:
    python bench/proposals.py --proposer random --n 20 --out /tmp/pb/random
    python bench/proposals.py --proposer small --n 26 --threads 2 --out /tmp/pb/small
    python bench/proposals.py --proposer large --n 24 --threads 1 --out /tmp/pb/large
    python bench/proposals.py --arena /tmp/pb/random /tmp/pb/small /tmp/pb/large \\
        --results /tmp/pb/arena.jsonl --budget 8 --seeds 2 --replicates 3 --devices cpu:2
    python bench/proposals.py --table /tmp/pb/arena.jsonl --arena /tmp/pb/random /tmp/pb/small /tmp/pb/large --seeds 1

(the stages may run at once: the arena stage follows the proposal directories). It
measures; it decides nothing and writes nothing outside --out and --results (and the
capped data copy next to the prepared data).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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


def parent_telemetry(logs: list[str]) -> str:
    """The parent's telemetry as the loop shows it (population.telemetry), from run logs of
    the parent (e.g. the arena stage's root runs); "" without logs."""
    from population import telemetry

    runs = [telemetry.parse_progress(Path(p).read_text()) for p in logs]
    runs = [r for r in runs if r]
    if not runs:
        return ""
    curve = []
    for f in telemetry.CURVE_FRACTIONS:
        losses = [x for r in runs if (x := telemetry.loss_at(r, f)) is not None]
        if losses:
            curve.append((f, statistics.fmean(losses)))
    t = telemetry.Telemetry("root", len(runs), tuple(curve), statistics.fmean(r[-1].step for r in runs),
                            statistics.fmean(r[-1].tokens_per_s for r in runs), None, None, None, None)
    return telemetry.render(t)


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
    checks = []
    if args.preflight:  # as the loop does (population.cli): one sandboxed CPU step before the arena
        import prepare
        from arena.preflight import Preflight

        data_dir = Path(os.environ["EVOLVE_DATA"]) if os.environ.get("EVOLVE_DATA") else prepare.default_data_dir()
        checks.append(Preflight((ROOT / "prepare.py").read_text(), data_dir))
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.proposer == "random":
            proposer = build_proposer({"model": "random"}, records.append, cost_ceiling_usd=None, checks=checks)
            model_name = "random"
        else:
            m = stack.enter_context(EmbeddedModel(LOCAL_MODEL_CHOICES[args.proposer], n_threads=args.threads))
            proposer = build_proposer({}, records.append, cost_ceiling_usd=None, embedded=m, max_retries=1,
                                      checks=checks)
            model_name = m.alias
        startup = time.monotonic() - t_start
        tried: list[str] = []
        known = [("root", template, "the parent")]
        for c in sorted(Path(args.known).glob("child_*.py")) if args.known else []:
            known.append((f"earlier-{c.stem}", c.read_text(), "proposed"))  # as late in a run
        shown = parent_telemetry(args.parent_log or [])
        for i in range(args.n):
            persona = personas[i % len(personas)]
            ctx = ProposalContext(
                persona=persona, program=PROGRAM, parent_id="root", parent_commit="0" * 40,
                parent_train_py=template, tried=list(reversed(tried))[:10], noise_floor=args.noise_floor,
                novelty=NoveltyIndex.build(known), telemetry=shown,
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


# -- the arena stage -----------------------------------------------------------------------


def bench_data_dir(eval_kib: int) -> Path:
    """A prepared copy of the default corpus whose validation and test splits are capped at
    `eval_kib` KiB (prepare caps them at 128 KiB): scoring is most of a short CPU run's
    cost, and root and children are scored on the same text, so the comparison stays
    paired. Built once, next to the default data directory."""
    import prepare

    base = prepare.default_data_dir()
    out = base.with_name(f"{base.name}-eval{eval_kib}k")
    if not (out / "manifest.json").exists():
        prepare.cap_documents.__defaults__ = (eval_kib << 10,)  # the cap is a default argument
        if prepare.main(["--data-dir", str(out)]) != 0:
            raise SystemExit(f"could not prepare {out}")
    return out


def noise_floor(root: dict[int, list[float]]) -> tuple[float, int]:
    """(sd of the difference of two runs of one program on one seed, degrees of freedom):
    sqrt(2) x the within-seed sd of the root's replicates, pooled over seeds."""
    ss = sum(sum((x - statistics.fmean(xs)) ** 2 for x in xs) for xs in root.values() if len(xs) > 1)
    df = sum(len(xs) - 1 for xs in root.values() if len(xs) > 1)
    return (math.sqrt(2 * ss / df) if df else float("nan")), df


def table(results_path: Path, seeds: int, k: float = 2.0) -> dict:
    """The figures of one results file (JSON lines written by the arena stage)."""
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    runs = [r for r in rows if r.get("kind") == "run"]
    root: dict[int, list[float]] = {}
    for r in runs:
        if r["proposer"] == "root" and r["val_bpb"] is not None:
            root.setdefault(r["seed"], []).append(r["val_bpb"])
    sd_pair, df = noise_floor(root)
    seed_means = {s: statistics.fmean(v) for s, v in root.items()}
    sd_seed = statistics.stdev(seed_means.values()) if len(seed_means) > 1 else float("nan")
    children: dict[tuple[str, str], dict] = {}
    for r in runs:
        if r["proposer"] == "root":
            continue
        c = children.setdefault((r["proposer"], r["child"]), {"runs": {}, "failed": [], "changes": r.get("changes")})
        if r["val_bpb"] is None:
            c["failed"].append(r["status"])
        else:
            c["runs"][r["seed"]] = r["val_bpb"]
    out: dict = {"root": {s: [round(x, 4) for x in v] for s, v in sorted(root.items())}, "sd_pair": sd_pair,
                 "sd_pair_df": df, "sd_seed": sd_seed, "threshold": -k * sd_pair, "proposers": {}}
    for (prop, name), c in sorted(children.items()):
        p = out["proposers"].setdefault(prop, {"measured": 0, "failed": 0, "beats": 0, "worse": 0, "diffs": [],
                                               "children": []})
        want = [s for s in range(seeds) if s in seed_means]
        if c["failed"]:
            p["failed"] += 1
            p["children"].append((name, None, "failed: " + ",".join(sorted(set(c["failed"]))), c["changes"]))
            continue
        if not want or any(s not in c["runs"] for s in want):
            continue  # still running when the stage stopped
        d = statistics.fmean(c["runs"][s] - seed_means[s] for s in want)
        p["measured"] += 1
        p["diffs"].append(d)
        verdict = "beats" if d < -k * sd_pair else "worse" if d > k * sd_pair else "within"
        p["beats"] += verdict == "beats"
        p["worse"] += verdict == "worse"
        p["children"].append((name, round(d, 4), verdict, c["changes"]))
    return out


def print_table(t: dict, dirs: list[Path] | None = None) -> None:
    """The arena figures; with the proposal directories, the proposal-stage figures beside them."""
    from scipy import stats

    print(f"root val_bpb by seed (replicates): {t['root']}")
    print(f"paired noise sd (same program, same seed; {t['sd_pair_df']} df): {t['sd_pair']:.4f}; "
          f"seed-to-seed sd of the root: {t['sd_seed']:.4f}; beats its parent: mean paired d < "
          f"{t['threshold']:+.4f}")
    for prop, p in t["proposers"].items():
        for name, d, verdict, changes in p["children"]:
            print(f"  {prop:7s} {name}: {'' if d is None else f'{d:+.4f}'} {verdict}  {'; '.join(changes or [])}")
    summaries = {}
    for d in dirs or []:
        if (d / "proposals.json").exists():
            summaries[d.name] = json.loads((d / "proposals.json").read_text())["summary"]
    print("| proposer | proposals | valid | refused as repeats (of children produced) | hypothesis matches "
          "(rubric) | measured | failed in the arena | beat parent beyond noise | worse beyond noise | "
          "paired d < 0 | median paired d | vs random (Mann-Whitney, d lower) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = t["proposers"].get("random", {}).get("diffs", [])
    for prop, p in t["proposers"].items():
        sm = summaries.get(prop)
        stage = (f"{sm['n']} | {sm['valid']}/{sm['n']} | {sm['repeats_refused']}/{sm['children_produced']} | "
                 f"{sm['hypothesis_matches']}/{sm['valid']}" if sm else "- | - | - | -")
        n, diffs = p["measured"], p["diffs"]
        if not n:
            print(f"| {prop} | {stage} | 0 | {p['failed']} | - | - | - | - | - |")
            continue
        vs = "-"
        if prop != "random" and len(base) > 1 and len(diffs) > 1:
            vs = f"p = {stats.mannwhitneyu(diffs, base, alternative='less').pvalue:.2f}"
        print(f"| {prop} | {stage} | {n} | {p['failed']} | {p['beats']}/{n} ({p['beats'] / n:.0%}) | "
              f"{p['worse']}/{n} | {sum(x < 0 for x in diffs)}/{n} | {statistics.median(diffs):+.4f} | {vs} |")


def run_arena(args: argparse.Namespace) -> int:
    """The root (replicated) and each valid child on the same seeds through the real arena,
    children of the proposers taken in turn, picked up as the proposal stage writes them."""
    import tempfile

    from arena import ExperimentRepo, LocalArena, RunRequest, detect_slots
    from arena.records import RunOutcome, Status

    dirs = [Path(d) for d in args.arena]
    parents = {(d / "parent.py").read_text() for d in dirs if (d / "parent.py").exists()}
    if len(parents) != 1:
        print("every --arena directory needs the same parent.py (run the proposal stage with --out first)",
              file=sys.stderr)
        return 1
    template = parents.pop()
    data_dir = bench_data_dir(args.eval_kib)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-proposals-"))
    repo = ExperimentRepo.create(run_dir / "run", template, (ROOT / "prepare.py").read_text(), "# bench\n")
    seeds = list(range(args.seeds))
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    arena = LocalArena(repo, data_dir, detect_slots(args.devices))
    # the root's replicates first; then every child on seed 0 as it comes (the proposers in
    # turn), the later seeds when no new child waits: breadth first, so a stage stopped
    # early has every proposer's children on seed 0
    todo: list[tuple[str, str, str, int, list[str]]] = [
        ("root", f"root-r{r}", repo.root_commit, s, []) for s in seeds for r in range(args.replicates)]
    later: list[tuple[str, str, str, int, list[str]]] = []
    taken: dict[str, set[str]] = {str(d): set() for d in dirs}
    # runs an earlier invocation with the same results file already measured are not redone
    done = set()
    if results.exists():
        done = {(r["child"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())
                if r.get("kind") == "run"}
    todo = [t for t in todo if (t[1], t[3]) not in done]
    t0 = time.monotonic()
    inflight: dict[tuple[str, int], tuple[str, str, list[str]]] = {}

    def next_run() -> tuple[str, str, str, int, list[str]] | None:
        if todo:
            return todo.pop(0)
        if time.monotonic() - t0 <= args.stop_after_s:
            for _ in dirs:
                d = dirs.pop(0)
                dirs.append(d)  # round robin
                new = new_child(d)
                if new is not None:
                    later.extend(new[1:])
                    return new[0]
        return later.pop(0) if later else None

    def new_child(d: Path) -> list[tuple[str, str, str, int, list[str]]] | None:
        key = str(d)
        if len(taken[key]) >= args.max_children:
            return None
        for c in sorted(d.glob("child_*.py")):
            if c.stem in taken[key]:
                continue
            taken[key].add(c.stem)
            name = f"{d.name}-{c.stem}"
            text = c.read_text()
            commit = repo.commit_candidate(repo.root_commit, text, f"bench {name}")
            runs = [(d.name, name, commit, s, changed_constants(template, text)) for s in seeds if (name, s) not in done]
            if runs:
                return runs
        return None

    def finished(d: Path) -> bool:
        return (d / "proposals.json").exists() and all(
            c.stem in taken[str(d)] for c in d.glob("child_*.py")) or len(taken[str(d)]) >= args.max_children

    try:
        with results.open("a") as out:
            out.write(json.dumps({"kind": "start", "budget_s": args.budget, "seeds": args.seeds,
                                  "replicates": args.replicates, "devices": args.devices,
                                  "dirs": [str(d) for d in dirs]}) + "\n")
            while True:
                while arena.free_slots() > 0:
                    nxt = next_run()
                    if nxt is None:
                        break
                    prop, name, commit, seed, changes = nxt
                    arena.submit(RunRequest(candidate_id=name, commit=commit, seed=seed, budget_s=args.budget))
                    inflight[(name, seed)] = (prop, name, changes)
                if not inflight and not todo and not later:
                    if all(finished(d) for d in dirs) or time.monotonic() - t0 > args.stop_after_s:
                        break
                for r in arena.poll(timeout=5.0):
                    prop, name, changes = inflight.pop((r.candidate_id, r.seed))
                    if r.outcome != RunOutcome.FINISHED:  # not measured (arena error): run it again
                        print(f"{name} seed {r.seed}: {r.outcome.value}, redone: {r.message[:100]}", flush=True)
                        todo.insert(0, (prop, name, r.commit, r.seed, changes))
                        continue
                    ok = r.status == Status.EVALUATED
                    row = {"kind": "run", "proposer": prop, "child": name, "seed": r.seed, "status": r.status.value,
                           "val_bpb": r.val_bpb if ok else None, "wall_s": r.wall_seconds,
                           "cpu_s": r.cpu_seconds, "steps": r.claimed.get("num_steps"), "changes": changes,
                           "load1": os.getloadavg()[0], "message": "" if ok else r.message[-300:]}
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"{name} seed {r.seed}: {r.status.value} val_bpb={r.val_bpb} wall {r.wall_seconds}s "
                          f"load {row['load1']:.1f} {row['message'][-80:]}", flush=True)
    finally:
        arena.close()
    print("---")
    print_table(table(results, args.seeds, args.k), dirs)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--proposer", choices=("small", "large", "random"), default="small",
                    help="embedded 0.5B (small), 1.5B (large), or the random-move baseline")
    ap.add_argument("--noise-floor", type=float, default=None)
    ap.add_argument("--out", default=None, help="directory for proposals.json and child_XX.py")
    ap.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=True,
                    help="run every child one sandboxed CPU step before accepting it, as the loop does")
    ap.add_argument("--parent-log", nargs="+", default=None,
                    help="proposal stage: run logs of the parent, shown as its telemetry (as the loop does)")
    ap.add_argument("--known", default=None,
                    help="proposal stage: a directory of earlier children the novelty gate knows from the start")
    ap.add_argument("--arena", nargs="+", default=None, help="second stage: directories written by --out")
    ap.add_argument("--results", default=None, help="arena stage: JSON lines file of every run (appended)")
    ap.add_argument("--table", default=None, help="print the figures of a --results file and stop")
    ap.add_argument("--budget", type=float, default=8.0, help="training budget, CPU seconds per thread")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--replicates", type=int, default=3, help="runs of the root per seed (the noise floor)")
    ap.add_argument("--devices", default="cpu:2", help="arena slots (arena.devices): cpu:2 = 2 slots, 1 thread each")
    ap.add_argument("--eval-kib", type=int, default=32, help="arena stage: evaluation splits capped at this")
    ap.add_argument("--max-children", type=int, default=20, help="per proposer")
    ap.add_argument("--stop-after-s", type=float, default=float("inf"), help="submit no new child after this")
    ap.add_argument("--k", type=float, default=2.0, help="beats its parent: mean paired d < -k x paired noise sd")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.table:
        print_table(table(Path(args.table), args.seeds, args.k), [Path(d) for d in args.arena or []])
        return 0
    if args.arena:
        if not args.results:
            ap.error("--arena needs --results FILE")
        return run_arena(args)
    return run_proposals(args)


if __name__ == "__main__":
    sys.exit(main())
