"""Kill `evolve --simulate` with SIGKILL at random moments, resume it, and check the store
after every kill; at the end compare with a run that was never interrupted.

Per trial: start evolve; after a random delay SIGKILL it; check that every evaluation
that was finished before the kill is still there, unchanged; start it again with
--resume; repeat until it finishes. Then the finished evaluations, every candidate's
final status and the archive must equal the uninterrupted reference run's.

    python bench/kill_resume.py [--trials 10] [--generations 3] [--population 3]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(run_dir: Path, args: list[str], resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "population.cli", *args, "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read(run_dir: Path) -> tuple[dict, list, list, int]:
    db = run_dir / "evolve.db"
    if not db.exists():
        return {}, [], [], 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        evals = {(c, s): (st, v, m) for c, s, st, v, m in conn.execute(
            "SELECT candidate_id, seed, status, val_bpb, peak_mem_mb FROM evaluations "
            "WHERE status NOT IN ('running', 'interrupted', 'cancelled')")}
        interrupted = conn.execute("SELECT COUNT(*) FROM evaluations WHERE status = 'interrupted'").fetchone()[0]
        row = conn.execute("SELECT archive FROM generations ORDER BY generation DESC LIMIT 1").fetchone()
        cands = list(conn.execute("SELECT id, parent_id, persona, hypothesis, status FROM candidates "
                                  "ORDER BY generation, idx"))
    except sqlite3.OperationalError:
        return {}, [], [], 0
    finally:
        conn.close()
    return evals, json.loads(row[0]) if row else [], cands, interrupted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--population", type=int, default=3)
    ap.add_argument("--max-kills", type=int, default=12, help="after this many kills a trial runs to the end")
    a = ap.parse_args(argv)
    args = ["--simulate", "--generations", str(a.generations), "--population", str(a.population),
            "--sim-run-seconds", "0.02", "-q"]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        ref_dir = Path(tmp) / "reference"
        t0 = time.time()
        p = start(ref_dir, args, resume=False)
        _, err = p.communicate()
        if p.returncode != 0:
            print(err.decode())
            return 1
        ref = read(ref_dir)
        duration = time.time() - t0
        print(f"reference: {len(ref[0])} evaluations, {len(ref[2])} candidates, archive {len(ref[1])} "
              f"({duration:.1f} s); kills at uniform random times in [0.2 s, {duration:.1f} s] after each start")
        print("| trial | kills | evaluations lost at a kill | interrupted runs redone | same evaluations "
              "| same statuses | same archive |")
        print("|---|---|---|---|---|---|---|")
        for trial in range(a.trials):
            rng = random.Random(trial)
            kills = lost = 0
            fresh = 0
            while kills == 0:  # a run that ends before its first kill proves nothing: start over
                fresh += 1
                run_dir = Path(tmp) / f"trial{trial}-{fresh}"
                kills, lost = run_trial(run_dir, args, rng, duration, a.max_kills)
                if kills < 0:
                    failures += 1
                    break
            evals, archive, cands, interrupted = read(run_dir)
            same = (evals == ref[0], cands == ref[2], archive == ref[1])
            failures += (not all(same)) or lost > 0
            print(f"| {trial} | {kills} | {lost} | {interrupted} | {same[0]} | {same[1]} | {same[2]} |")
    print("all trials passed" if not failures else f"{failures} trial(s) FAILED")
    return 1 if failures else 0


def run_trial(run_dir: Path, args: list[str], rng: random.Random, duration: float,
              max_kills: int) -> tuple[int, int]:
    """Kill and resume until evolve finishes; returns (kills, evaluations lost at a kill),
    kills -1 when evolve failed."""
    kills = lost = attempts = 0
    while True:
        before = read(run_dir)[0]
        p = start(run_dir, args, resume=run_dir.exists())  # a start killed before its run appeared starts anew
        attempts += 1
        try:
            p.wait(timeout=rng.uniform(0.2, duration) if kills < max_kills else None)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            after = read(run_dir)[0]
            lost += sum(1 for k, v in before.items() if after.get(k) != v)
            continue
        if p.returncode != 0:
            print(f"{run_dir.name}: evolve exited {p.returncode}: {p.stderr.read().decode()[-500:]}")
            return -1, lost
        return kills, lost

if __name__ == "__main__":
    sys.exit(main())
