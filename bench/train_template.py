"""Benchmark the seed train.py: train it under a budget on several seeds and print
val_bpb, tokens/s, peak memory, evaluation time and the seed-to-seed spread (the noise
floor the population builds on).

    python bench/train_template.py --budget 60 --seeds 3            # CPU, 2 threads
    python bench/train_template.py --budget 60 --seeds 1 --device cuda

Each run is `python train.py` in a scratch directory, as the arena runs it; peak memory
is the child's max RSS from wait4 (CPU) or torch's peak allocation (CUDA, reported by
the candidate). The evaluation rebuilds the model in this process with harness code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prepare  # noqa: E402


def run_once(workdir: Path, seed: int, budget: float, device: str, threads: int) -> dict:
    out = workdir / f"out-{seed}"
    env = dict(os.environ, EVOLVE_BUDGET_S=str(budget), EVOLVE_SEED=str(seed), EVOLVE_DEVICE=device,
               EVOLVE_OUT=str(out), EVOLVE_THREADS=str(threads))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "train.py"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed (seed {seed}):\n{output[-3000:]}")
    claimed = json.loads((out / "claimed.json").read_text())

    sys.path.insert(0, str(workdir))
    import train  # the scratch copy of the template

    model = train.build_model(**json.loads((out / "build.json").read_text()))
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.to(device).eval()
    meta = prepare.load_meta()
    t1 = time.time()
    result = prepare.evaluate_bpb(model, prepare.load_split("val"), meta.token_bytes, device=device,
                                  batch_size=64 if device.startswith("cuda") else 16)
    eval_s = time.time() - t1
    return {
        "seed": seed,
        "val_bpb": result.bpb,
        "eval_seconds": eval_s,
        "eval_tokens": result.n_tokens,
        "tokens_per_second": claimed["tokens_per_second"],
        "num_steps": claimed["num_steps"],
        "num_params_M": claimed["num_params_M"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "peak_vram_mb": claimed["peak_vram_mb"],
        "mfu_percent": claimed.get("mfu_percent"),
        "wall_seconds": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    if prepare.main([]) != 0:
        raise SystemExit(1)
    meta = prepare.load_meta()
    print(f"data: {meta.source}, vocab {meta.vocab_size}, split tokens {meta.split_tokens}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-template-"))
    shutil.copy(ROOT / "train_template.py", workdir / "train.py")
    shutil.copy(ROOT / "prepare.py", workdir / "prepare.py")
    rows = []
    for seed in range(args.seeds):
        row = run_once(workdir, seed, args.budget, args.device, args.threads)
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    bpbs = [r["val_bpb"] for r in rows]
    print("---")
    print(f"device: {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{args.threads} threads'})")
    print(f"budget_s: {args.budget}")
    print(f"val_bpb_mean: {statistics.mean(bpbs):.4f}")
    print(f"val_bpb_std: {statistics.stdev(bpbs) if len(bpbs) > 1 else float('nan'):.4f}")
    print(f"tokens_per_second: {statistics.mean(r['tokens_per_second'] for r in rows):.0f}")
    print(f"peak_rss_mb: {max(r['peak_rss_mb'] for r in rows):.0f}")
    if args.device.startswith("cuda"):
        print(f"peak_vram_mb: {max(r['peak_vram_mb'] for r in rows):.0f}")
        print(f"mfu_percent: {statistics.mean(r['mfu_percent'] for r in rows):.1f}")
    print(f"eval_seconds: {statistics.mean(r['eval_seconds'] for r in rows):.2f} "
          f"for {rows[0]['eval_tokens']} val tokens")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
