"""One run request, start to finish: guard, worktree, train, evaluate, clean up.

Flow: a backend (`arena.local.LocalArena`, `arena.ray_backend.RayArena`) takes a
`RunRequest` off its queue, picks a device slot and calls `execute_run`, which
1. repeats the safety guards (`arena.guards.check_safety`) on the commit;
2. checks the commit out in a fresh worktree and makes an output directory;
3. trains and evaluates it (`arena.runner.run_candidate`) within the run's
   `arena.budget.Limits` (the backend's calibration gives them);
4. removes the worktree and the checkpoint (the commit stays), and writes the
   measured metrics as a git note on the commit;
and returns a `RunResult`. Faults of the arena itself (not the candidate's) give
outcome ARENA_ERROR, a cancelled run outcome CANCELLED (`arena.records.RunOutcome`):
neither is a verdict on the candidate, and a candidate never silently disappears.

What it does not do: queue, choose slots, or decide what the numbers mean.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from arena.budget import WALL_FACTOR, Limits
from arena.devices import Slot
from arena.guards import check_safety
from arena.progress import curve, parse_progress, read_log
from arena.records import RunOutcome, RunRequest, RunResult, Status, unmeasured
from arena.repo import ExperimentRepo
from arena.runner import RunHandle, run_candidate
from arena.sandbox import Sandbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArenaConfig:
    """Settings shared by every run of an arena."""

    mem_limit_mb: int
    use_bwrap: bool | None = None  # None: bubblewrap when installed
    startup_allowance_s: float = 60.0  # budget seconds for start-up, until the root's is measured
    wall_factor: float = WALL_FACTOR  # CPU slots: wall limit = factor x (budget + allowance)
    eval_timeout_s: float = 900.0  # probe + val + test; CPU evaluation of big models is slow
    term_grace_s: float = 3.0  # between SIGTERM and SIGKILL
    keep_outputs: bool = False  # keep model.pt after evaluation
    annotate: bool = True  # git note with the metrics on each commit
    # torch.compile's caches, shared by the candidates of a run and kept across resumes
    # (None: <run dir>/cache/compile)
    compile_cache_dir: str | None = None
    # start the trusted evaluator while the candidate trains (runner.WarmEvaluator);
    # None: on GPU slots, where the host's CPUs are idle during training. A CPU slot's
    # cores are busy then, so there it only moves the start-up, unless cores are spare.
    warm_evaluator: bool | None = None

    def warm_evaluator_on(self, slot: Slot) -> bool:
        return slot.device_type == "cuda" if self.warm_evaluator is None else self.warm_evaluator

    @property
    def sandbox(self) -> Sandbox:
        return Sandbox(self.mem_limit_mb, self.use_bwrap)

    def limits(self, budget_s: float, slot: Slot) -> Limits:
        """A run's limits before the root's start-up is known on this slot."""
        return Limits(
            budget_s, self.startup_allowance_s, slot.device_type, slot.threads, self.wall_factor
        )


def run_name(request: RunRequest) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", request.candidate_id)[:40]
    return f"{safe}-s{request.seed}-{uuid.uuid4().hex[:6]}"


def note_text(result: RunResult) -> str:
    parts = [f"seed {result.seed}: {result.status.value}"]
    for key in ("val_bpb", "test_bpb", "peak_mem_mb", "wall_seconds", "cpu_seconds"):
        value = getattr(result, key)
        if value is not None:
            parts.append(f"{key}={value:.6g}")
    parts.append(f"device={result.device_type} ({result.device_name})")
    if result.status.is_failure():
        parts.append(f"reason: {result.message.splitlines()[0][:200] if result.message else ''}")
    return " ".join(parts)


def commit_compile_cache(repo: ExperimentRepo, commit: str, base: Path) -> Path:
    """The torch.compile cache one commit's runs write: `base/<commit>`, shared by its
    seeds and kept across resumes. A commit never writes another commit's cache (a
    candidate must not plant compiled code in its parent's control runs); a new commit
    starts from a copy of its first parent's, so a child of an unchanged model is warm."""
    own = base / commit
    if own.is_dir():
        return own
    base.mkdir(parents=True, exist_ok=True)
    parents = repo.parents(commit)
    seed = base / parents[0] if parents else None
    staging = base / f".{commit}.{uuid.uuid4().hex[:8]}"
    if seed is not None and seed.is_dir():
        shutil.copytree(seed, staging, symlinks=True, ignore_dangling_symlinks=True)
    else:
        staging.mkdir()
    try:
        staging.rename(own)
    except OSError:  # another seed of this commit made it first
        shutil.rmtree(staging, ignore_errors=True)
    return own


def execute_run(
    request: RunRequest,
    repo: ExperimentRepo,
    data_dir: Path,
    trusted_prepare: Path,
    slot: Slot,
    config: ArenaConfig,
    logs_dir: Path,
    handle: RunHandle | None = None,
    name: str | None = None,
    limits: Limits | None = None,
) -> RunResult:
    t0 = time.monotonic()
    base = dict(
        candidate_id=request.candidate_id,
        commit=request.commit,
        seed=request.seed,
        device_type=slot.device_type,
        device_name=slot.device_name,
    )
    verdict = check_safety(repo, request.commit)
    if not verdict.ok:
        return RunResult(status=Status.GUARD_REFUSED, message=verdict.message, **base)
    name = name or run_name(request)
    log_path = logs_dir / f"{name}.log"
    out_dir = repo.run_dir / "out" / name
    worktree: Path | None = None
    try:
        worktree = repo.add_worktree(request.commit, name)
        outcome = run_candidate(
            worktree=worktree,
            out_dir=out_dir,
            log_path=log_path,
            data_dir=data_dir,
            trusted_prepare=trusted_prepare,
            slot=slot,
            seed=request.seed,
            budget_s=request.budget_s,
            sandbox=config.sandbox,
            startup_allowance_s=config.startup_allowance_s,
            eval_timeout_s=config.eval_timeout_s,
            term_grace_s=config.term_grace_s,
            handle=handle,
            compile_cache=commit_compile_cache(
                repo, request.commit, Path(config.compile_cache_dir or repo.run_dir / "cache" / "compile")
            ),
            limits=limits or config.limits(request.budget_s, slot),
            warm_evaluator=config.warm_evaluator_on(slot),
        )
    except Exception as exc:  # the arena's own failure: explained, redone, not counted
        log.exception("run %s failed inside the arena", name)
        return unmeasured(
            request,
            RunOutcome.ARENA_ERROR,
            f"arena error (not the candidate's fault; not measured): {exc}",
            log_path=str(log_path),
            wall_seconds=time.monotonic() - t0,
            device_type=slot.device_type,
            device_name=slot.device_name,
        )
    finally:
        if worktree is not None:
            repo.remove_worktree(worktree)
        if not config.keep_outputs:
            shutil.rmtree(out_dir, ignore_errors=True)
    claimed = dict(outcome.claimed or {})
    claimed["progress"] = curve(parse_progress(read_log(log_path)))  # claims, for the evaluation cascade
    # run_candidate gives status PROPOSED exactly when the arena cancelled the run
    cancelled = outcome.status is Status.PROPOSED
    result = RunResult(
        outcome=RunOutcome.CANCELLED if cancelled else RunOutcome.FINISHED,
        status=outcome.status,
        message=outcome.message,
        val_bpb=outcome.val_bpb,
        test_bpb=outcome.test_bpb,
        peak_mem_mb=outcome.peak_mem_mb,
        training_seconds=outcome.train_wall_s,
        cpu_seconds=outcome.train_cpu_s,
        wall_seconds=time.monotonic() - t0,
        log_path=str(log_path),
        claimed=claimed,
        **base,
    )
    if config.annotate and result.outcome is RunOutcome.FINISHED:
        try:
            repo.annotate(request.commit, note_text(result))
        except Exception as exc:  # a failed note loses no result; say so
            log.warning("could not write the git note for %s: %s", request.commit[:10], exc)
    log.info(
        "%s seed %d on %s: %s %s",
        request.candidate_id,
        request.seed,
        slot.name,
        result.status.value,
        f"val_bpb={result.val_bpb:.4f}" if result.val_bpb else "",
    )
    return result
