"""Does the population keep only what is really better? A benchmark on the simulated
noisy landscape (population.simulated), no training.

For each trial (a salt: another draw of the noise and of the proposals) and each noise
level, it runs
- ours: the real generation loop (store, git, guards, racing, paired tests, FDR,
  epsilon-Pareto archive) on the simulated arena, and counts its evaluations E;
- greedy: autoresearch's loop with the same proposer and the same E evaluations: run
  the child once, keep it if its val_bpb is lower than the best so far. Two variants:
  a fresh seed per run (as on a GPU, where runs are not bit-reproducible) and one fixed
  seed for every run (the most favourable case for greedy).

A proposal is *truly no better* when its noise-free value improves neither objective
(val_bpb nor peak memory) over its parent's. Reported per method and noise level: the
share of truly-no-better proposals that were accepted, the share of acceptances that
were truly no better, and the true val_bpb of what each method would hand back at the
end (ours: the archive member with the lowest measured mean, as `evolve export --best`;
greedy: its last kept commit).

    python bench/search_noise.py [--trials 20] [--generations 10] [--population 6] [--sigma 0.02]

Ours runs twice: with lookahead 0 (every child planned from the newest archive; the
simulated proposer answers at once, so there is nothing to overlap) and with lookahead 2
(the default with 2 device slots: 2 children per generation are planned one archive
version early so the devices never wait for an LLM).
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


@dataclass
class TrialResult:
    evaluations: int
    proposals: int
    no_better: int
    no_better_accepted: int
    accepted: int
    final_true_val: float


def truly_no_better(land: Landscape, child_py: str, parent_py: str) -> bool:
    cv, cm = land.true(read_knobs(child_py))
    pv, pm = land.true(read_knobs(parent_py))
    return cv >= pv and cm >= pm


def run_ours(cfg: ProgramConfig, sigma: float, salt: int, workdir: Path) -> TrialResult:
    loop, store, repo, arena = simulated_loop(workdir / f"ours-{salt}-{sigma}", cfg, sigma=sigma, salt=salt)
    try:
        loop.run()
        land = arena.landscape
        cands = {c.id: c for c in store.candidates()}
        files = {cid: repo.read_file(c.commit, "train.py") for cid, c in cands.items() if c.commit}
        proposals = no_better = nb_acc = accepted = 0
        for c in cands.values():
            if c.id == ROOT_ID or c.commit is None or c.status in (Status.GUARD_REFUSED, Status.PROPOSED):
                continue
            if c.status.is_failure():
                continue
            proposals += 1
            nb = truly_no_better(land, files[c.id], files[c.parent_id])
            acc = c.status == Status.CONFIRMED
            no_better += nb
            accepted += acc
            nb_acc += nb and acc
        evaluations = sum(1 for e in store.evaluations() if e.status != "cancelled")
        best = min(store.generations()[-1].archive, key=lambda r: (r["val_bpb"], r["peak_mem_mb"]))
        final = land.true(read_knobs(files[best["candidate_id"]]))[0]
        return TrialResult(evaluations, proposals, no_better, nb_acc, accepted, final)
    finally:
        arena.close()
        store.close()


def run_greedy(evaluations: int, sigma: float, salt: int, fixed_seed: bool) -> TrialResult:
    """autoresearch: one run per proposal, keep if lower than the best so far."""
    land = Landscape(sigma=sigma, salt=salt)
    proposer = KnobProposer(salt=salt)
    rng = random.Random(f"greedy:{salt}")
    best_py = SIM_TRAIN_PY
    best_obs = land.observe(read_knobs(best_py), 0)[0]
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
        obs = land.observe(knobs, 0 if fixed_seed else k)[0]
        nb = truly_no_better(land, prop.train_py, best_py)
        acc = obs < best_obs
        no_better += nb
        accepted += acc
        nb_acc += nb and acc
        if acc:
            best_py, best_obs, tried = prop.train_py, obs, []
    return TrialResult(evaluations, proposals, no_better, nb_acc, accepted, land.true(read_knobs(best_py))[0])


def summarize(name: str, sigma: float, rows: list[TrialResult], root_true: float) -> str:
    fa = [r.no_better_accepted / r.no_better for r in rows if r.no_better]
    fdp = [r.no_better_accepted / r.accepted for r in rows if r.accepted]
    final = [r.final_true_val for r in rows]
    return (f"| {name:22s} | {sigma:.3f} | {statistics.fmean(r.evaluations for r in rows):6.1f} | "
            f"{statistics.fmean(r.proposals for r in rows):6.1f} | "
            f"{100 * statistics.fmean(fa):6.1f}% | {100 * statistics.fmean(fdp) if fdp else 0:6.1f}% | "
            f"{statistics.fmean(final):.4f} +- {statistics.stdev(final) if len(final) > 1 else 0:.4f} | "
            f"{root_true - statistics.fmean(final):+.4f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--initial-seeds", type=int, default=1)
    ap.add_argument("--max-seeds", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.02, help="val_bpb noise std; the second block doubles it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = ProgramConfig(generations=args.generations, population=args.population,
                        initial_seeds=args.initial_seeds, max_seeds=args.max_seeds)
    root_true = Landscape().true(read_knobs(SIM_TRAIN_PY))[0]
    print("greedy rows get exactly as many evaluations as the 'ours' row above them.")
    print(f"simulated landscape: root true val_bpb {root_true:.4f}; {args.trials} trials per row; "
          f"ours: {args.generations} generations x {args.population} children, seeds root {cfg.root_seeds} "
          f"/ initial {cfg.initial_seeds} / max {cfg.max_seeds}, accept_p {cfg.accept_p}")
    print()
    print("| method                 | sigma | evals  | props  | no-better accepted | accepted that were no better "
          "| final true val_bpb | gain vs root |")
    print("|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="search-noise-") as tmp:
        for sigma in (args.sigma, 2 * args.sigma):
            for lookahead in (0, 2):
                c = dataclasses.replace(cfg, lookahead=lookahead)
                ours = [run_ours(c, sigma, salt, Path(tmp) / f"la{lookahead}") for salt in range(args.trials)]
                fresh = [run_greedy(r.evaluations, sigma, salt, fixed_seed=False) for salt, r in enumerate(ours)]
                fixed = [run_greedy(r.evaluations, sigma, salt, fixed_seed=True) for salt, r in enumerate(ours)]
                print(summarize(f"ours, lookahead {lookahead}", sigma, ours, root_true))
                print(summarize("  greedy, fresh seed", sigma, fresh, root_true))
                print(summarize("  greedy, fixed seed", sigma, fixed, root_true))
                sys.stdout.flush()
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
