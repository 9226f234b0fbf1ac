"""Measure the arena's fixed cost per candidate, and its share of a 300 s budget.

    python bench/arena_overhead.py                       # seed train.py, KJV byte cache, CPU
    python bench/arena_overhead.py --reps 3 --budget 5 --data ~/.cache/evolve/data/kjv-byte
    python bench/arena_overhead.py --tiny                # the tests' 2-layer model (fast)
    python bench/arena_overhead.py --device cuda         # one GPU slot

What is timed, each `--reps` times; run 1 starts with an empty compile cache (cold),
the later runs share it as a run's candidates do (warm, median reported):
- guards: `arena.guards.check_safety` on the candidate commit;
- worktree: `git worktree add` + `git worktree remove` of a candidate commit;
- process start: supervisor + sandbox + `python -c pass` (the bare floor), and the
  same for a script that imports torch and prepare (what every train.py pays);
- training overhead: wall time of the supervised `python train.py` minus the training
  time its BudgetClock counted (start-up, imports, warm-up steps, saving);
- evaluator start: from launching `python -m arena.evaluate` until its sandboxed model
  worker has imported train.py, rebuilt the model and loaded the checkpoint;
- evaluation: causality probe + val_bpb + test_bpb (spot checks included), over the
  pipe to the worker; evaluator total = its whole supervised wall time;
- evaluator total, warm-started (`--warm-evaluator`, default on): the same candidate
  and seed run once more with the evaluator started while it trains
  (runner.WarmEvaluator), timed from the end of training; its val_bpb must be the same.
  Its start-up then runs beside the training: where the slot's threads fill the
  machine (CPU), the training's own overhead shows what that costs it.
Arena-added seconds per candidate = guards + worktree + bare process start + evaluator
total (cold, and warm-started). The candidate's own start-up (imports, torch.compile, warm-up, saving) is the
training overhead, reported apart, cold and warm: on a GPU the difference is the compile
time a warm cache saves (on CPU the template does not compile).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena.devices import detect_slots  # noqa: E402
from arena.guards import check_safety  # noqa: E402
from arena.local import trusted_harness  # noqa: E402
from arena.records import Status  # noqa: E402
from arena.repo import ExperimentRepo  # noqa: E402
from arena.runner import candidate_env, run_candidate, supervised  # noqa: E402
from arena.sandbox import Sandbox, default_mem_limit_mb  # noqa: E402


def build_data(args, tmp: Path) -> Path:
    if args.data:
        return Path(args.data).expanduser()
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from arena_helpers import build_cache

        return build_cache(tmp / "data")
    default = Path.home() / ".cache" / "evolve" / "data" / "kjv-byte"
    if (default / "manifest.json").exists():
        return default
    subprocess.run(
        [sys.executable, str(ROOT / "prepare.py"), "--data-dir", str(tmp / "data")], check=True
    )
    return tmp / "data"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="runs; the first is cold (at least 2)")
    p.add_argument("--budget", type=float, default=5.0, help="training budget of each run (s)")
    p.add_argument("--data", help="data cache (default: the KJV byte cache)")
    p.add_argument("--tiny", action="store_true", help="the tests' 2-layer model and a 10 KB cache")
    p.add_argument("--device", default="cpu", help="cpu, or a GPU index list like 0")
    p.add_argument("--no-sandbox", action="store_true")
    p.add_argument("--mem-limit-mb", type=int, default=None, help="default: 80%% of RAM")
    p.add_argument(
        "--warm-evaluator",
        choices=["on", "off"],
        default="on",
        help="also time each candidate with the evaluator started while it trains",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    slot = detect_slots("cpu:1" if args.device == "cpu" else args.device)[0]
    args.mem_limit_mb = args.mem_limit_mb or default_mem_limit_mb(1)
    sandbox = Sandbox(args.mem_limit_mb, False if args.no_sandbox else None)
    train_py = (
        (ROOT / "tests" / "arena_tiny_train.py") if args.tiny else (ROOT / "train_template.py")
    ).read_text()
    with tempfile.TemporaryDirectory(prefix="arena-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        data_dir = build_data(args, tmp)
        repo = ExperimentRepo.create(
            tmp / "run", train_py, (ROOT / "prepare.py").read_text(), "# bench\n"
        )
        commit = repo.commit_candidate(
            repo.root_commit, train_py + "\n# bench candidate\nX = 1\n", "bench"
        )
        prepare = trusted_harness(repo)
        t = {
            k: []
            for k in (
                "wt_add",
                "wt_remove",
                "start_bare",
                "start_torch",
                "train_over",
                "eval_ready",
                "eval_compute",
                "eval_total",
                "eval_warm",
                "train_over_warm",
                "train_wall",
                "guards",
            )
        }
        compile_cache = tmp / "compile-cache"  # empty: the first run compiles cold
        results = []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            assert check_safety(repo, commit).ok
            t["guards"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            wt = repo.add_worktree(commit, f"bench-{rep}")
            t["wt_add"].append(time.perf_counter() - t0)
            out = repo.run_dir / "out" / f"bench-{rep}"
            out.mkdir(parents=True)
            env = candidate_env(slot, rep, args.budget, out, data_dir, out)
            for key, code in (("start_bare", "pass"), ("start_torch", "import torch, prepare")):
                argv = sandbox.command(
                    [sys.executable, "-c", code],
                    cwd=wt,
                    writable=[wt, out],
                    data_dir=data_dir,
                    gpu=slot.device_type == "cuda",
                )
                t0 = time.perf_counter()
                rep_ = supervised(argv, wt, env, out / "start.log", 60, sandbox, slot, None)
                assert rep_["returncode"] == 0, (out / "start.log").read_text()
                t[key].append(time.perf_counter() - t0)
            run = dict(
                worktree=wt,
                data_dir=data_dir,
                trusted_prepare=prepare,
                slot=slot,
                seed=rep,
                budget_s=args.budget,
                sandbox=sandbox,
                eval_timeout_s=1800,
                compile_cache=compile_cache,
            )
            outcome = run_candidate(**run, out_dir=out, log_path=out.parent / f"bench-{rep}.log")
            if outcome.status is not Status.EVALUATED:
                print(f"run {rep}: {outcome.status.value}: {outcome.message}", file=sys.stderr)
                return 1
            if args.warm_evaluator == "on":
                again = run_candidate(
                    **run,
                    out_dir=out.parent / f"bench-{rep}-warm",
                    log_path=out.parent / f"bench-{rep}-warm.log",
                    warm_evaluator=True,
                )
                if again.status is not Status.EVALUATED or again.val_bpb != outcome.val_bpb:
                    print(f"run {rep}, warm evaluator: {again.status.value}: {again.message} "
                          f"(val_bpb {again.val_bpb} against {outcome.val_bpb})", file=sys.stderr)
                    return 1
                t["eval_warm"].append(again.eval_wall_s)
                warm_counted = float(again.claimed.get("training_seconds", args.budget))
                t["train_over_warm"].append(again.train_wall_s - warm_counted)
            counted = float(outcome.claimed.get("training_seconds", args.budget))
            t["train_wall"].append(outcome.train_wall_s)
            t["train_over"].append(outcome.train_wall_s - counted)
            t["eval_total"].append(outcome.eval_wall_s)
            # the evaluator once more, directly, for its internal split
            res_path = out.parent / f"bench-{rep}.json"
            cmd = [
                sys.executable,
                "-m",
                "arena.evaluate",
                "--worktree",
                str(wt),
                "--out",
                str(out),
                "--data",
                str(data_dir),
                "--prepare",
                str(prepare),
                "--result",
                str(res_path),
                "--device",
                slot.device_type,
                "--threads",
                str(slot.threads),
                "--mem-limit-mb",
                str(args.mem_limit_mb),
                "--sandbox",
                "off" if args.no_sandbox else "auto",
            ]
            subprocess.run(
                cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, **slot.env())
            )
            ev = json.loads(res_path.read_text())
            t["eval_ready"].append(ev["ready_seconds"])
            t["eval_compute"].append(ev["eval_seconds"] - ev["ready_seconds"])
            results.append((outcome.val_bpb, ev["val_bpb"]))
            t0 = time.perf_counter()
            repo.remove_worktree(wt)
            t["wt_remove"].append(time.perf_counter() - t0)

    cold = {k: v[0] if v else float("nan") for k, v in t.items()}
    warm = {k: med(v[1:]) if len(v) > 1 else float("nan") for k, v in t.items()}
    print(
        f"arena overhead per candidate ({'tiny model' if args.tiny else 'seed train.py'}, "
        f"{slot.name} [{slot.device_name}, {slot.threads} threads], "
        f"sandbox {'off' if args.no_sandbox or sandbox.bwrap is None else 'bubblewrap'}, "
        f"run 1 cold, median of {args.reps - 1} warm, budget {args.budget:g} s)"
    )
    rows = [
        ("guards", "guards"),
        ("worktree create", "wt_add"),
        ("worktree remove", "wt_remove"),
        ("process start, bare python (supervisor + sandbox)", "start_bare"),
        ("evaluator start (worker ready, model loaded)", "eval_ready"),
        ("evaluation (probe + val + test)", "eval_compute"),
        ("evaluator total (supervised wall)", "eval_total"),
        ("evaluator total, warm-started (after training)", "eval_warm"),
        ("candidate: process start importing torch + prepare", "start_torch"),
        ("candidate: training overhead (wall - counted budget)", "train_over"),
        ("  the same beside a warm-starting evaluator", "train_over_warm"),
    ]
    print(f"  {'':<54} {'cold':>7}   {'warm':>7}")
    for name, key in rows:
        print(f"  {name:<54} {cold[key]:7.2f} s {warm[key]:7.2f} s")
    evaluators = ["eval_total"] + (["eval_warm"] if args.warm_evaluator == "on" else [])
    for evaluator in evaluators:
        for label, m in (("cold", cold), ("warm", warm)):
            added = m["guards"] + m["wt_add"] + m["wt_remove"] + m["start_bare"] + m[evaluator]
            label += ", warm-started evaluator" if evaluator == "eval_warm" else ""
            print(
                f"  {'arena-added seconds per candidate, ' + label:<54} {added:7.2f} s  "
                f"= {100 * added / 300:.1f}% of a 300 s budget"
            )
    print(
        f"  trusted val_bpb per run: {', '.join(f'{a:.4f}' for a, _ in results)} "
        f"(re-evaluation gives {', '.join(f'{b:.4f}' for _, b in results)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
