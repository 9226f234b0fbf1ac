"""Does the population find more real improvement than keep-if-lower, and keep only what
is really better? A benchmark on the simulated noisy landscape (population.simulated),
no training.

For each trial (a salt: another draw of the noise and of the proposals) and landscape it
runs
- ours: the real generation loop (store, git, guards, paired racing, the posterior
  acceptance rule, the epsilon-Pareto archive) on the simulated arena, and counts every
  run the arena was given, E;
- greedy: autoresearch's loop with the same proposer and the same E runs: run the child
  once, keep it if its val_bpb is lower than the best so far. Two variants: a fresh seed
  per run (as on a GPU, where runs are not bit-reproducible) and one fixed seed for every
  run (the most favourable case for greedy). Greedy's runs see the same machine: run k
  is at time k, in batch k // slots.

Landscapes: `stationary` (noise depends on the seed only) and `load` (as on a busy
machine whose budget is wall time: slow drift, load spikes that hit a whole batch,
per-candidate noise levels, heavy-tailed run noise).

A proposal is *truly no better* when its noise-free value improves neither objective
(val_bpb nor peak memory) over its parent's. Reported per method: E, proposals run, the
share of truly-no-better proposals that were *ever* confirmed (a member that later fell
out still counts), the share of confirmations that were truly no better, the true
val_bpb of what the method hands back at the end (ours: the archive member with the
lowest val_bpb estimate, as `evolve export --best`; greedy: its last kept commit), how
many trials ended worse than the root, and in how many trials ours ended lower than
that method.

`--parents best` makes every persona of ours prefer the best member (Thompson) instead of
half of them spreading children along the memory/quality front: the benchmark scores
val_bpb only, as greedy does, so this shows what the two-objective archive costs here.

    python bench/search_noise.py [--trials 20] [--generations 10] [--population 6] [--sigma 0.02]
                                 [--landscape both] [--parents personas|best] [--set FIELD=VALUE]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.proposal import Proposal, ProposalContext
from arena.records import Status
from population.loop import ROOT_ID
from population.program import ProgramConfig
from population.simulated import SIM_TRAIN_PY, KnobProposer, Landscape, read_knobs, simulated_loop

SLOTS = 2
CHECKPOINTS = 4  # progress points per run (the arena's virtual clock); 0: no training curves, no cascade


@dataclass
class TrialResult:
    evaluations: int
    proposals: int
    no_better: int
    no_better_accepted: int
    accepted: int
    final_true_val: float
    stopped_early: int = 0


def landscape(kind: str, sigma: float, salt: int) -> Landscape:
    if kind == "stationary":
        return Landscape(sigma=sigma, salt=salt)
    return Landscape(sigma=sigma, rho=0.5, salt=salt, drift=2.0, spike_prob=0.1, spike_size=6.0,
                     hetero=0.4, tail_df=3.0)


def truly_no_better(land: Landscape, child_py: str, parent_py: str) -> bool:
    cv, cm = land.true(read_knobs(child_py))
    pv, pm = land.true(read_knobs(parent_py))
    return cv >= pv and cm >= pm


def run_ours(cfg: ProgramConfig, land: Landscape, workdir: Path,
             preferences: dict[str, str] | None = None, checkpoints: int = CHECKPOINTS,
             runs: int | None = None) -> TrialResult:
    """The real loop; with `runs`, until it has spent that many runs' budgets (checked
    at the end of each generation, as program.md's max_hours is, on a clock that counts
    device time in runs)."""
    if runs is not None:
        cfg = dataclasses.replace(cfg, generations=1000, max_hours=float(runs))
    loop, store, repo, arena = simulated_loop(workdir, cfg, slots=SLOTS, salt=land.salt, landscape=land,
                                              preferences=preferences, checkpoints=checkpoints)
    if runs is not None:
        store.start_session(["bench/search_noise.py"], {})
        started = store.sessions()[0]["started_at"]
        loop.clock = lambda: started + 3600.0 * (arena.device_runs if checkpoints else arena.submitted)
    try:
        loop.run()
        cands = {c.id: c for c in store.candidates()}
        files = {cid: repo.read_file(c.commit, "train.py") for cid, c in cands.items() if c.commit}
        ever = {e["candidate_id"] for e in store.events(1_000_000) if e["kind"] == "confirmed"}
        proposals = no_better = nb_acc = accepted = 0
        for c in cands.values():
            if c.id == ROOT_ID or c.commit is None or c.status in (Status.GUARD_REFUSED, Status.PROPOSED):
                continue
            if c.status.is_failure():
                continue
            proposals += 1
            nb = truly_no_better(land, files[c.id], files[c.parent_id])
            acc = c.id in ever
            no_better += nb
            accepted += acc
            nb_acc += nb and acc
        best = min(store.generations()[-1].archive, key=lambda r: (r["val_bpb"], r["peak_mem_mb"]))
        final = land.true(read_knobs(files[best["candidate_id"]]))[0]
        stopped = sum(1 for e in store.events(1_000_000) if e["kind"] == "cascade_stopped")
        runs = round(arena.device_runs) if checkpoints else arena.submitted
        return TrialResult(runs, proposals, no_better, nb_acc, accepted, final, stopped)
    finally:
        arena.close()
        store.close()


def run_greedy(evaluations: int, land: Landscape, fixed_seed: bool) -> TrialResult:
    """autoresearch: one run per proposal, keep if lower than the best so far."""
    proposer = KnobProposer(salt=land.salt)
    rng = random.Random(f"greedy:{land.salt}")
    best_py = SIM_TRAIN_PY
    best_obs = land.observe(read_knobs(best_py), 0, 0, 0)[0]
    tried: list[str] = []
    proposals = no_better = nb_acc = accepted = 0
    for k in range(1, evaluations):
        ctx = ProposalContext(persona=rng.choice(["explorer", "tuner"]), program="", parent_id="best",
                              parent_commit="best", parent_train_py=best_py, tried=list(tried))
        prop = proposer.propose(ctx)
        if not isinstance(prop, Proposal):
            continue
        knobs = read_knobs(prop.train_py)
        tried.append(prop.hypothesis)
        if land.failure(knobs) is not None:
            continue  # a crash is discarded, as autoresearch does
        proposals += 1
        obs = land.observe(knobs, 0 if fixed_seed else k, k, k // SLOTS)[0]
        nb = truly_no_better(land, prop.train_py, best_py)
        acc = obs < best_obs
        no_better += nb
        accepted += acc
        nb_acc += nb and acc
        if acc:
            best_py, best_obs, tried = prop.train_py, obs, []
    return TrialResult(evaluations, proposals, no_better, nb_acc, accepted, land.true(read_knobs(best_py))[0])


def row(name: str, rows: list[TrialResult], ours: list[TrialResult], root_true: float) -> str:
    nulls = sum(r.no_better for r in rows)
    fa = sum(r.no_better_accepted for r in rows) / nulls if nulls else 0.0
    acc = sum(r.accepted for r in rows)
    fdp = sum(r.no_better_accepted for r in rows) / acc if acc else 0.0
    final = [r.final_true_val for r in rows]
    worse = sum(v > root_true for v in final)
    wins = "-" if rows is ours else f"{sum(o.final_true_val < r.final_true_val for o, r in zip(ours, rows))}/{len(rows)}"
    return (f"| {name:20s} | {statistics.fmean(r.evaluations for r in rows):6.1f} | "
            f"{statistics.fmean(r.proposals for r in rows):6.1f} | {100 * fa:5.1f}% | {100 * fdp:5.1f}% | "
            f"{statistics.fmean(final):.4f} +- {statistics.stdev(final) if len(final) > 1 else 0:.4f} | "
            f"{root_true - statistics.fmean(final):+.4f} | {worse}/{len(rows)} | {wins} | "
            f"{statistics.fmean(r.stopped_early for r in rows):5.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--sigma", type=float, default=0.02, help="val_bpb noise std (single run, stationary part)")
    ap.add_argument("--landscape", choices=["stationary", "load", "both"], default="both")
    ap.add_argument("--parents", choices=["personas", "best"], default="personas",
                    help="ours: parents as the personas prefer (explorer: the memory/quality front, tuner: the "
                         "best) or every persona preferring the best (val_bpb only, as greedy)")
    ap.add_argument("--runs", type=int, default=None,
                    help="ours runs generations until it has spent this many runs' budgets (instead of "
                         "--generations); greedy gets exactly what ours spent")
    ap.add_argument("--checkpoints", type=int, default=CHECKPOINTS,
                    help="progress points per simulated run (0: no training curves, so no evaluation cascade)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a ProgramConfig field of ours, e.g. --set max_seeds=3 (default: program.md's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(ProgramConfig)}:
            ap.error(f"--set {item}: no ProgramConfig field {name!r}")
        overrides[name] = float(value) if "." in value else int(value)
    cfg = ProgramConfig(generations=args.generations, population=args.population).with_overrides(**overrides)
    root_true = Landscape().true(read_knobs(SIM_TRAIN_PY))[0]
    kinds = ["stationary", "load"] if args.landscape == "both" else [args.landscape]
    print(f"simulated landscape: root true val_bpb {root_true:.4f}; {args.trials} trials; sigma {args.sigma}; "
          f"ours: {args.generations} generations x {args.population} children, {SLOTS} slots, seeds root "
          f"{cfg.root_seeds} / initial {cfg.initial_seeds} / max {cfg.max_seeds}, accept_p {cfg.accept_p}, "
          f"futility_p {cfg.futility_p}, rescore every {cfg.rescore_every}, lookahead {cfg.lookahead}, "
          f"cascade stop_p {cfg.cascade_stop_p} ({args.checkpoints} checkpoints per run)"
          f"{' (overrides: ' + ', '.join(args.set) + ')' if args.set else ''}; parents: {args.parents}; "
          "greedy rows get exactly as many runs as ours, trial by trial")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="search-noise-") as tmp:
        for kind in kinds:
            print(f"\n{kind} noise\n")
            print("| method               | runs   | props  | no-better ever confirmed | confirmed that were "
                  "no better | final true val_bpb | gain vs root | ended worse than root | ours lower in | "
                  "stopped early |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            lands = [landscape(kind, args.sigma, salt) for salt in range(args.trials)]
            prefs = {"explorer": "best", "tuner": "best"} if args.parents == "best" else None
            ours = [run_ours(dataclasses.replace(cfg), land, Path(tmp) / f"{kind}-{land.salt}", prefs,
                             args.checkpoints, args.runs) for land in lands]
            fresh = [run_greedy(r.evaluations, land, fixed_seed=False) for r, land in zip(ours, lands)]
            fixed = [run_greedy(r.evaluations, land, fixed_seed=True) for r, land in zip(ours, lands)]
            print(row("ours", ours, ours, root_true))
            print(row("greedy, fresh seed", fresh, ours, root_true))
            print(row("greedy, fixed seed", fixed, ours, root_true))
            sys.stdout.flush()
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
