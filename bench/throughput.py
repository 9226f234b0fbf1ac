"""Are the device slots kept busy? Busy share and throughput with 1, 2, 4 and 8 slots.

Two parts, each for every slot count N in --slots:

loop: the real generation loop (store, git, guards, racing) on the simulated arena, with a
  scripted proposer that answers in 5-20 s (uniform, seeded) and runs that last 300 s,
  all times multiplied by --scale so that a trial takes seconds. Reported: the share of
  slot time spent training (sum of run times / (N x wall time), from the first run to the
  last result; and, as busy<end, up to the end of the run: the moment nothing is left but
  the last generation's racing children, whose later rounds nothing can run beside), and
  runs finished per hour (in unscaled hours) against N x the one-slot rate. The root's
  noise-floor runs have generation 1's first `lookahead` children beside them. `--why`
  splits the idle slot time by what the loop was waiting for when it left a slot free
  (asked before each poll): the root's runs, a
  unit (a child and its parent's control start together) wider than the free slots,
  children waiting for the LLM, a generation's racing tail with nothing else planned (in
  the last generation: the end of the run, which nothing can fill), or, outside the polls,
  the loop's own work between a result and the next submission (a fixed cost per result
  that the time scale magnifies 1/scale times: at scale 0.02 a run lasts 6 s).
arena: LocalArena and RayArena fed by a plain feeder that keeps every slot busy with a
  candidate that sleeps --sleep seconds (exits without a checkpoint: no evaluation). Reported:
  runs per hour against N x the one-slot rate, the share of slot time the candidate
  process ran (its supervised wall time) out of N x wall time (the rest is arena
  overhead), and the overhead per run (submit to result, less the candidate's time): the
  mean, over the first N runs (each on a fresh slot; on Ray a new worker process), and later.

    python bench/throughput.py                        # loop part, 1 2 4 8 slots, scale 0.02
    python bench/throughput.py --slots 8 --why        # where the idle slot time goes
    python bench/throughput.py --part arena --slots 1 2 --sleep 20 --runs 2
    python bench/throughput.py --part all --ray

Targets (issue 12): busy share >= 95 %, throughput >= 0.9 x N. Times on a shared machine
are noisy: say how busy it was next to any figure.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena.records import RunOutcome, RunRequest, RunResult  # noqa: E402
from population.simulated import KnobProposer, SimulatedArena  # noqa: E402

TRAIN_S, LLM_S = 300.0, (5.0, 20.0)
SLEEPER = "import time\ntime.sleep({s})\n"
LAST = " (the last generation: the end of the run)"


class TimedArena(SimulatedArena):
    """The simulated arena, recording when each run holds a slot, and, for each poll
    with a free slot, why the loop left it free (`why()`, asked on the loop's thread)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spans: list[tuple[float, float]] = []
        self.waits: list[tuple[float, float, str]] = []  # (start, end, why) of polls
        self.why: Callable[[], str] = lambda: "?"

    def _start(self, at: float, result: RunResult) -> None:
        self.spans.append((at, at + self.run_seconds))
        super()._start(at, result)

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        t, why = time.monotonic(), (self.why() if self.free_slots() else "")
        try:
            return super().poll(timeout)
        finally:
            self.waits.append((t, time.monotonic(), why))


def idle_reason(loop) -> str:
    """Why the loop leaves a slot free at this moment (its state before a poll)."""
    from arena.records import Status

    g = loop.version() + 1
    if g == 0:
        return "root runs (generation 0)"
    if loop._needed_runs(g) or loop._needed_runs(g + 1, children_only=True):
        return "unit wider than the free slots"
    for h in (g, g + 1):
        if any(c.status == Status.PROPOSED and c.commit is None for c in loop.state.children(h)):
            return f"generation {'g' if h == g else 'g+1'} children waiting for the LLM"
    last = LAST if g >= loop.cfg.generations else ""
    return f"barrier: generation g racing, nothing else planned{last}"


def idle_shares(n: int, spans, waits, t0: float, t1: float) -> dict[str, float]:
    """Idle slot time between t0 and t1 by reason, as shares of n x (t1 - t0); idle time
    outside the polls is the loop's own work (or waiting for proposals with no run)."""
    edges = sorted({t0, t1, *(s for s, _ in spans), *(e for _, e in spans),
                    *(x for w in waits for x in w[:2])})
    out: dict[str, float] = {}
    for a, b in zip(edges, edges[1:]):
        if b <= t0 or a >= t1:
            continue
        mid = (a + b) / 2
        idle = n - sum(1 for s, e in spans if s <= mid < e)
        if idle <= 0:
            continue
        why = next((w[2] or "?" for w in waits if w[0] <= mid < w[1]), "loop work / no run in flight")
        out[why] = out.get(why, 0.0) + idle * (b - a) / (n * (t1 - t0))
    return out


class SlowProposer(KnobProposer):
    """KnobProposer answering after a seeded uniform delay in `delay` seconds."""

    def __init__(self, delay: tuple[float, float], seed: int) -> None:
        super().__init__()
        self.delay, self.rng, self.lock = delay, random.Random(seed), threading.Lock()

    def propose(self, ctx):
        with self.lock:
            wait = self.rng.uniform(*self.delay)
        time.sleep(wait)
        return super().propose(ctx)


def loop_trial(n: int, args, workdir: Path) -> dict:
    """One simulated run with `n` slots, built as `population.simulated.simulated_loop`
    builds it, with the recording arena and the slow proposer."""
    from arena.repo import ExperimentRepo
    from population.loop import GenerationLoop
    from population.program import ProgramConfig
    from population.simulated import SIM_PREFERENCES, SIM_TRAIN_PY, Landscape, prepare_py_text
    from population.store import Store, store_path

    cfg = ProgramConfig(budget_s=TRAIN_S, population=2 * n, generations=args.generations,
                        proposal_workers=n)
    run_dir = workdir / f"loop-{n}"
    repo = ExperimentRepo.create(run_dir, SIM_TRAIN_PY, prepare_py_text(), "+++\n+++\n")
    store = Store.open(store_path(run_dir))
    arena = TimedArena(lambda c: repo.read_file(c, "train.py"), slots=n,
                       landscape=Landscape(sigma=0.01), run_seconds=TRAIN_S * args.scale)
    proposer = SlowProposer(tuple(x * args.scale for x in LLM_S), seed=n)
    loop = GenerationLoop(store, repo, arena, proposer, cfg, ["explorer", "tuner"], slots=n,
                          preferences=SIM_PREFERENCES)
    arena.why = lambda: idle_reason(loop)
    try:
        loop.run()
    finally:
        arena.close()
        store.close()
    spans = sorted(arena.spans)
    t0, t1 = spans[0][0], max(e for _, e in spans)
    # the end of the run: from the first poll with nothing left but the last generation's races
    end = min((w[0] for w in arena.waits if w[2].endswith(LAST)), default=t1)
    before = [(s, min(e, end)) for s, e in spans if s < end]
    return {
        "busy": sum(e - s for s, e in spans) / (n * (t1 - t0)),
        "busy_before_end": sum(e - s for s, e in before) / (n * (end - t0)) if end > t0 else 0.0,
        "per_hour": len(spans) / ((t1 - t0) / 3600) * args.scale,  # in unscaled hours
        "idle": idle_shares(n, spans, arena.waits, t0, t1),
        "runs": len(spans), "wall": t1 - t0,
    }


def arena_trial(kind: str, n: int, args, world) -> dict:
    from arena.devices import Slot, cpu_name

    repo, data_dir, commit = world
    slots = [Slot(f"cpu:{i}", "cpu", cpu_name(), None, 1) for i in range(n)]
    if kind == "ray":
        from arena.ray_backend import RayArena

        arena = RayArena(repo, data_dir, slots, mem_limit_mb=1024)
    else:
        from arena.local import LocalArena

        arena = LocalArena(repo, data_dir, slots, mem_limit_mb=1024)
    total, done, results = n * args.runs, 0, []
    submitted = 0
    sent: dict[str, float] = {}
    overhead: list[float] = []  # per run: submit to result, less the candidate's own time
    t0 = time.monotonic()
    try:
        while done < total:
            while submitted < total and arena.free_slots() > 0:
                sent[f"s{submitted}"] = time.monotonic()
                arena.submit(RunRequest(f"s{submitted}", commit, submitted, args.sleep + 5))
                submitted += 1
            for r in arena.poll(0.2):
                done += 1
                results.append(r)
                overhead.append(time.monotonic() - sent[r.candidate_id] - (r.training_seconds or 0.0))
        wall = time.monotonic() - t0
    finally:
        arena.close()
    ok = [r for r in results if r.outcome is RunOutcome.FINISHED]
    ran = sum(r.training_seconds or 0.0 for r in ok)
    return {"per_hour": len(ok) / (wall / 3600), "busy": ran / (n * wall), "runs": len(ok),
            "overhead": overhead}


def start_ray(ray, cpus: int, attempts: int = 3) -> None:
    """A local Ray node. Ray gives a node 30 s to register (hard-coded in Ray 2.60); a
    heavily loaded machine can miss that, so a failed start is tried again."""
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts - 1:
                raise
            print(f"  (ray did not start: {exc}; trying again)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["loop", "arena", "all"], default="loop")
    p.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--scale", type=float, default=0.02, help="loop part: time scale (1 = real)")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--sleep", type=float, default=20.0, help="arena part: candidate sleep (s)")
    p.add_argument("--runs", type=int, default=3, help="arena part: runs per slot")
    p.add_argument("--ray", action="store_true", help="arena part: also on a local Ray cluster")
    p.add_argument("--why", action="store_true", help="loop part: idle slot time by reason")
    p.add_argument("--no-local", action="store_true", help="arena part: Ray only")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp_s:
        tmp = Path(tmp_s)
        if args.part in ("loop", "all"):
            print(f"loop on the simulated arena: runs {TRAIN_S:g} s, proposer {LLM_S[0]:g}-"
                  f"{LLM_S[1]:g} s, time scale {args.scale:g}, {args.generations} generations")
            print(f"  {'slots':>5} {'busy':>7} {'busy<end':>8} {'runs/h':>8} {'vs N x 1':>9}")
            base = None
            for n in args.slots:
                r = loop_trial(n, args, tmp)
                base = base or r["per_hour"] / n
                print(f"  {n:>5} {100 * r['busy']:6.1f}% {100 * r['busy_before_end']:7.1f}% "
                      f"{r['per_hour']:8.1f} {r['per_hour'] / (n * base):8.2f}x")
                if args.why:
                    print(f"  {'':>5} {r['runs']} runs in {r['wall']:.1f} s (scaled)")
                    for why, share in sorted(r["idle"].items(), key=lambda kv: -kv[1]):
                        print(f"  {'':>5} idle {100 * share:5.1f}%: {why}")
        if args.part in ("arena", "all"):
            sys.path.insert(0, str(ROOT / "tests"))
            from arena_helpers import build_cache, make_repo

            data_dir = build_cache(tmp / "data")
            repo = make_repo(tmp / "run")
            commit = repo.commit_candidate(repo.root_commit, SLEEPER.format(s=args.sleep), "sleep")
            kinds = ([] if args.no_local else ["local"]) + (["ray"] if args.ray else [])
            for kind in kinds:
                if kind == "ray":
                    import os

                    import ray

                    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
                    start_ray(ray, max(args.slots))
                print(f"{kind} arena, candidates sleeping {args.sleep:g} s, {args.runs} runs per slot")
                print(f"  {'slots':>5} {'runs/h':>8} {'vs N x 1':>9} {'candidate share':>16} "
                      f"{'overhead per run (s): mean, first N, later':>44}")
                base = None
                for n in args.slots:
                    r = arena_trial(kind, n, args, (repo, data_dir, commit))
                    base = base or r["per_hour"] / n
                    o = r["overhead"]
                    later = sum(o[n:]) / len(o[n:]) if o[n:] else float("nan")
                    print(f"  {n:>5} {r['per_hour']:8.1f} {r['per_hour'] / (n * base):8.2f}x "
                          f"{100 * r['busy']:15.1f}% {sum(o) / len(o):14.1f} {sum(o[:n]) / n:14.1f} {later:14.1f}")
                if kind == "ray":
                    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
