"""Does machine load still move the score? The same seeds of the seed train.py, idle and
beside busy background processes, through the real arena.

    python bench/load_spread.py                          # 3 seeds, 20 s, 2 python busy loops
    python bench/load_spread.py --budget 5 --load matmul --data ~/.cache/evolve/data/kjv-byte

Each seed runs twice on one CPU slot (all cores): once with the machine as it is
("idle": run it on a quiet machine) and once beside `--busy` background processes
(`python`: pure-Python busy loops; `matmul`: one-thread torch matmul loops). Printed per
seed: the steps the run made (the candidate's own count, `num_steps`), val_bpb from the
trusted evaluator, the training tree's CPU seconds and wall seconds (both measured by the
arena). At a fixed step count the weights are bit-identical, so any difference between
the two runs of one seed comes from the budget's clock.

Summary: the spread of val_bpb over the seeds (max - min) in each condition and their
ratio (issue 9's target: loaded spread <= 2x idle spread), and the largest per-seed move
between idle and loaded, beside the idle spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena.devices import Slot, detect_slots  # noqa: E402
from arena.local import LocalArena  # noqa: E402
from arena.records import RunRequest, RunResult, Status  # noqa: E402
from arena.repo import ExperimentRepo  # noqa: E402

BUSY = {
    "python": "while True:\n    pass\n",
    "matmul": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a = torch.tanh(a @ a)\n"
    ),
}


def data_dir(args, tmp: Path) -> Path:
    if args.data:
        return Path(args.data).expanduser()
    out = tmp / "data"
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--data-dir", str(out)], check=True)
    return out


def row(seed: int, condition: str, r: RunResult) -> str:
    return (f"| {seed} | {condition} | {r.claimed.get('num_steps', '?')} | {r.val_bpb:.4f} | "
            f"{r.cpu_seconds:.1f} | {r.training_seconds:.1f} |")


def run_seeds(
    arena: LocalArena, commit: str, seeds: list[int], budget: float, condition: str
) -> list[RunResult]:
    results = []
    for seed in seeds:  # one at a time: the runs must not load each other
        arena.submit(RunRequest("seed", commit, seed, budget))
        (result,) = arena.poll(None)
        if result.status is not Status.EVALUATED:
            raise SystemExit(f"seed {seed}: {result.status.value}: {result.message}")
        print(row(seed, condition, result), flush=True)
        results.append(result)
    return results


def slot(threads: int | None) -> list[Slot]:
    """One CPU slot: all cores (the default), or `threads` of them."""
    slots = detect_slots("cpu:1")
    return slots if threads is None else [dataclasses.replace(slots[0], threads=threads)]


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=20.0, help="training seconds (default 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the one CPU slot (default: every core, as `evolve` gives one slot)")
    p.add_argument("--busy", type=int, default=2, help="background processes (default 2)")
    p.add_argument("--load", choices=sorted(BUSY), default="python")
    p.add_argument("--data", help="a prepared data cache (default: build the KJV one in a tmp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="evolve-load-spread-") as tmp:
        tmp = Path(tmp)
        data = data_dir(args, tmp)
        repo = ExperimentRepo.create(
            tmp / "run",
            (ROOT / "train_template.py").read_text(),
            (ROOT / "prepare.py").read_text(),
            "# load spread\n",
        )
        runs: dict[str, list[RunResult]] = {}
        print(f"budget {args.budget:g} s, {args.busy} busy {args.load} process(es) when loaded")
        print("| seed | condition | steps | val_bpb | cpu_s | wall_s |")
        print("| --- | --- | --- | --- | --- | --- |", flush=True)
        with LocalArena(repo, data, slot(args.threads), eval_timeout_s=1800) as arena:
            runs["idle"] = run_seeds(arena, repo.root_commit, args.seeds, args.budget, "idle")
            hogs = [
                subprocess.Popen([sys.executable, "-c", BUSY[args.load]])
                for _ in range(args.busy)
            ]
            try:
                runs["loaded"] = run_seeds(
                    arena, repo.root_commit, args.seeds, args.budget, "loaded"
                )
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    idle = [r.val_bpb for r in runs["idle"]]
    loaded = [r.val_bpb for r in runs["loaded"]]
    moves = [abs(a - b) for a, b in zip(idle, loaded)]
    ratio = spread(loaded) / spread(idle) if spread(idle) > 0 else float("inf")
    print(f"spread (max - min over seeds): idle {spread(idle):.4f}, loaded {spread(loaded):.4f}, "
          f"ratio {ratio:.2f} (target <= 2)")
    print(f"largest move of one seed, idle -> loaded: {max(moves):.4f} bpb")
    for cond in ("idle", "loaded"):
        steps = [r.claimed.get("num_steps", "?") for r in runs[cond]]
        print(f"steps {cond}: {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
