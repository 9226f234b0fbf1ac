"""The trusted evaluator: `python -m arena.evaluate` measures one trained candidate.

Flow: after a clean training run the runner starts this process. It never imports the
candidate. It starts `arena/eval_worker.py` in the sandbox (the worker imports train.py
without running its `__main__`, rebuilds the model with `build_model(**build.json)` and
loads `model.pt` with `weights_only=True`), then talks to it over a pipe: token ids go
out, logits come back. Everything that is measured is computed here, with the
harness's own functions from a trusted copy of prepare.py (the root commit's, never the
worktree's), always on log-probabilities (`prepare.target_log_probs`: absurd
logits refused), never on raw logits:
- the scorer (the first worker) answers `prepare.evaluate_bpb` on the validation split,
  then on the sealed test split; the windows of each batch are unrelated text, shuffled
  with a secret seed. While it scores, CHECK_ROWS_PER_SPLIT windows per split (chosen at
  random among all its batches) are kept for checking, with the scorer's answers;
- the scorer then answers the base input of `prepare.causality_probe` (random tokens,
  a secret seed) and is closed;
- a second, fresh worker (the checker: it never saw an original input; started early
  when two models fit the memory ceiling) answers the probe's changed inputs, then the
  kept windows, shuffled into new batches in a secret order: in each, one window whole,
  every other one with the tokens after a random cut replaced by text from the TRAIN
  split. At every compared position (the whole kept window; the others up to their
  cut) the log-probabilities of the scored targets and of a few secret token ids must
  agree with the scorer's within `prepare.CHECK_TOLERANCE` nats. A model that looks ahead, reads other rows,
  keeps state between calls, remembers its answers, or behaves differently when it
  detects a check cannot reproduce the scorer's numbers without the text it peeked at.
Non-finite logits give `nan`; absurd logits (|logit| > prepare.LOGIT_LIMIT) and a worker
that fails to import, build, load or answer in time give `contract_error`; failed
checks give `causality_violation`.

With `--go FILE` it starts warm (the runner starts it while the candidate trains): the
workers are started and import torch, the splits are loaded, and then it waits for the
runner to write FILE; nothing of the candidate runs before that (the workers wait for
their go frame before they import train.py).

It writes one JSON object to `--result`: status, message, val_bpb, test_bpb, probe and
timings (ready_seconds, score_seconds, check_seconds, eval_seconds, counted from the go
when warm; warm_seconds, spent before it). What it does not do: train, trust any
number the candidate wrote, or send the worker any text of the evaluation splits besides
the inputs it scores (check text comes from the train split).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import secrets
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

U32 = struct.Struct("<I")
WORKER = Path(__file__).resolve().parent / "eval_worker.py"
CHECK_ROWS_PER_SPLIT = 64  # scored windows per split that the fresh checker re-answers
SECRET_IDS = 7  # token ids per position compared besides the target (chosen at random)


class WorkerError(Exception):
    """The model worker failed or broke the protocol (a contract error)."""


class NotCausal(Exception):
    """The model's log-probabilities depend on future tokens, other rows or earlier calls."""


def load_trusted_prepare(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare"] = module
    spec.loader.exec_module(module)
    return module


class ModelProxy:
    """`logits_fn` for the harness: forwards token ids to one worker process and checks
    what comes back (shape) before the harness sees it (and checks the values)."""

    def __init__(self, proc: subprocess.Popen, vocab_size: int, deadline: float) -> None:
        self.proc = proc
        self.vocab_size = vocab_size
        self.deadline = deadline
        self.calls = 0

    def go(self) -> ModelProxy:
        """Let the worker (torch imported, waiting) import train.py and load the model."""
        try:
            self.proc.stdin.write(b"G")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone: wait_ready reports why
        return self

    def _read(self, n: int) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(
                    "the model worker did not answer before the evaluation time limit"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 22))
            if not chunk:
                code = self.proc.poll()
                raise WorkerError(f"the model worker exited (code {code}) mid-answer")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_frame_header(self) -> bytes:
        tag = self._read(1)
        if tag == b"E":
            n = U32.unpack(self._read(4))[0]
            raise WorkerError(self._read(min(n, 8000)).decode("utf-8", errors="replace"))
        return tag

    def wait_ready(self) -> None:
        tag = self.read_frame_header()
        if tag != b"R" or U32.unpack(self._read(4))[0] != 0:
            raise WorkerError(f"the model worker broke the protocol (got {tag!r} instead of ready)")

    def __call__(self, idx):
        import numpy as np
        import torch

        x = idx.detach().to("cpu", torch.int64).contiguous().numpy()
        b, t = x.shape
        try:
            self.proc.stdin.write(b"L" + U32.pack(b) + U32.pack(t) + x.tobytes())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the model worker is gone ({exc})") from exc
        tag = self.read_frame_header()
        if tag != b"O":
            raise WorkerError(f"the model worker broke the protocol (got {tag!r})")
        shape = tuple(U32.unpack(self._read(4))[0] for _ in range(3))
        if shape != (b, t, self.vocab_size):
            raise WorkerError(
                f"model(idx) returned logits of shape {list(shape)}, expected "
                f"[{b}, {t}, {self.vocab_size}]"
            )
        data = self._read(4 * b * t * self.vocab_size)
        self.calls += 1
        # finiteness and range are checked by the harness (prepare.target_log_probs)
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())

    def close(self) -> None:
        """Stop the worker at once: it holds nothing worth a clean exit, and a CUDA
        process's orderly shutdown costs about a second of the slot's time."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class FreshWorker:
    """`logits_fn` backed by a worker process that never saw what the scorer was sent.
    `start` returns a worker told to go. It is started early by `prestart()` (its
    start-up then overlaps the scoring) or else on the first call; `before` runs at the
    first call (the evaluator closes the scorer there, so a late-started checker never
    shares the memory ceiling with it)."""

    def __init__(self, start, before=None) -> None:
        self.start = start
        self.before = before
        self.proxy: ModelProxy | None = None
        self.ready = False
        self.started_early = False
        self.wait_seconds: float | None = None

    def prestart(self, warm: ModelProxy | None = None) -> None:
        """Start it now (or go with `warm`, a worker started before the go)."""
        if self.proxy is None:
            self.proxy = warm.go() if warm is not None else self.start()
            self.started_early = True

    def __call__(self, idx):
        if not self.ready:
            if self.before is not None:
                self.before()
            t0 = time.monotonic()
            if self.proxy is None:
                self.proxy = self.start()
            self.proxy.wait_ready()
            self.ready = True
            self.wait_seconds = time.monotonic() - t0
        return self.proxy(idx)

    @property
    def calls(self) -> int:
        return self.proxy.calls if self.proxy is not None else 0

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()


@dataclass(frozen=True)
class ScoredRow:
    """One scored window, kept for the checker, and what the scorer said of it."""

    split: str
    x: object  # int64 [T]: the window's inputs
    ids: object  # int64 [T, 1 + SECRET_IDS]: its targets, then secret token ids
    expected: object  # float64 [T, 1 + SECRET_IDS]: the scorer's log-probabilities of ids


class BehaviourChecks:
    """`observe` for `prepare.evaluate_bpb`: keeps randomly chosen scored rows (windows)
    of every split; `run` sends them to a fresh worker, shuffled into new batches in a
    secret order (every row among rows of other batches, so its neighbours differ from
    the scorer's, position 0 included). In each check batch one row is sent whole and
    compared at every position; every other row keeps its tokens up to a random cut,
    gets train-split text after it and is compared up to the cut."""

    def __init__(self, prepare: ModuleType, train_tokens, vocab_size: int,
                 rng: random.Random, tolerance: float) -> None:
        import numpy as np

        self.prepare = prepare
        self.train = np.asarray(train_tokens)
        self.vocab_size = vocab_size
        self.rng = rng
        self.tolerance = tolerance
        self.rows: list[ScoredRow] = []
        self.split = ""
        self.chosen: set[int] = set()
        self.seen = 0

    def start_split(self, split: str, n_windows: int, n_rows: int) -> None:
        """The next windows scored belong to `split`; keep `n_rows` of them at random."""
        self.split, self.seen = split, 0
        self.chosen = set(self.rng.sample(range(n_windows), min(n_rows, n_windows)))

    def __call__(self, x, y, counted, logits) -> None:
        import torch

        b, t = x.shape
        rows = [r for r in range(b) if self.seen + r in self.chosen]
        self.seen += b
        if not rows:
            return
        k = min(SECRET_IDS, self.vocab_size)
        extra = torch.tensor([self.rng.sample(range(self.vocab_size), k) for _ in rows])
        ids = torch.cat([y[rows].unsqueeze(-1), extra[:, None, :].expand(len(rows), t, k)], dim=-1)
        expected = self.prepare.target_log_probs(logits[rows], ids)
        for i, r in enumerate(rows):
            self.rows.append(ScoredRow(self.split, x[r].clone(), ids[i].clone(), expected[i]))

    def _train_text(self, n: int):
        import torch

        start = self.rng.randrange(0, max(1, len(self.train) - n))
        return torch.from_numpy(self.train[start : start + n].astype("int64"))

    def run(self, logits_fn, batch_size: int) -> int:
        """Send every kept row to `logits_fn` (the fresh checker); returns the number of
        rows checked. Raises NotCausal at the first disagreement."""
        import torch

        self.rng.shuffle(self.rows)
        for first in range(0, len(self.rows), batch_size):
            group = self.rows[first : first + batch_size]
            t = group[0].x.shape[0]
            kept = self.rng.randrange(len(group))
            changed = torch.stack([row.x for row in group])
            compared = torch.zeros(changed.shape, dtype=torch.bool)
            cuts = []
            for i in range(len(group)):
                cut = t - 1 if i == kept else self.rng.randrange(0, t - 1)
                if cut < t - 1:
                    changed[i, cut + 1 :] = self._train_text(t - cut - 1)
                compared[i, : cut + 1] = True
                cuts.append(cut)
            ids = torch.stack([row.ids for row in group])
            got = self.prepare.target_log_probs(logits_fn(changed), ids)
            diff = (got - torch.stack([row.expected for row in group])).abs().amax(dim=-1)
            diff[~compared] = 0.0
            worst = float(diff.max())
            if worst > self.tolerance:
                i, pos = (int(v) for v in (diff > self.tolerance).nonzero()[0])
                what = (
                    "with other rows beside it"
                    if cuts[i] == t - 1
                    else f"with other rows beside it and its tokens after position {cuts[i]} changed"
                )
                raise NotCausal(
                    f"on real text ({group[i].split} split), the log-probabilities at position "
                    f"{pos} of a scored row moved by {worst:.3g} nats when a fresh model process "
                    f"was sent it {what}: a position may depend only on its own row's earlier "
                    "tokens (no look-ahead, no other rows, no state kept between calls)"
                )
        return len(self.rows)


def start_worker(args, sandbox) -> subprocess.Popen:
    worktree, out_dir = Path(args.worktree).resolve(), Path(args.out).resolve()
    argv = sandbox.command(
        [sys.executable, str(WORKER), str(worktree), str(out_dir), args.device, str(args.threads)],
        cwd=worktree,
        readable=[worktree, out_dir, WORKER.parent],
        gpu=args.device == "cuda",
        seal=Path(args.data),  # hide the corpus the splits came from (sandbox.sealed_paths)
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
    }
    env.update(
        {
            "EVOLVE_DEVICE": args.device,
            "EVOLVE_THREADS": str(args.threads),
            "HOME": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
    )
    return subprocess.Popen(
        argv,
        cwd=str(worktree),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        preexec_fn=sandbox.limits(address_space=args.device == "cpu"),
        close_fds=True,
    )


# A model worker's resident memory before its model: Python, torch (and CUDA's context)
WORKER_BASE_MB = {"cpu": 800, "cuda": 3000}
EVALUATOR_MB = 1500  # this process: torch, the splits, the kept rows


def two_fit_at_start(args) -> bool:
    """Whether two model workers surely fit the memory ceiling before either has
    started, predicted from the checkpoint's size (loading holds it about twice): then
    the checker starts with the scorer and neither waits for the other's start-up."""
    try:
        model_mb = (Path(args.out) / "model.pt").stat().st_size / 2**20
    except OSError:
        return False
    per_worker = WORKER_BASE_MB[args.device] + 3 * model_mb
    return 2 * per_worker + EVALUATOR_MB < 0.5 * args.mem_limit_mb


def room_for_two(proc: subprocess.Popen, mem_limit_mb: int) -> bool:
    """Whether a second model worker fits beside the scorer `proc` (its process tree's
    resident memory, twice, plus this process) under 70% of the memory ceiling that the
    supervisor enforces on the evaluator's tree."""
    import psutil

    try:
        me = psutil.Process()
        worker = psutil.Process(proc.pid)
        tree = [worker, *worker.children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree)
        return 2 * rss + me.memory_info().rss < 0.7 * mem_limit_mb * 2**20
    except psutil.Error:
        return False


def wait_for_go(path: Path) -> str:
    """Block until the runner writes `path`: "go" (training ended cleanly, evaluate) or
    anything else (do not). Only the runner can write there: it is beside the
    candidate's output directory, outside everything the sandbox lets it write."""
    while True:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            time.sleep(0.02)


def run(args) -> dict:
    from arena.sandbox import Sandbox

    sandbox = Sandbox(args.mem_limit_mb, {"auto": None, "on": True, "off": False}[args.sandbox])
    t0 = time.monotonic()  # timings count from here, or from the go
    # The workers import torch while this process does the same and loads the data;
    # with --go all of that happens while the candidate still trains (the spare is the
    # checker, if the checkpoint turns out small enough for two to fit).
    first = start_worker(args, sandbox)
    spare = start_worker(args, sandbox) if args.go else None
    import torch

    torch.set_num_threads(max(1, args.threads))
    prepare = load_trusted_prepare(Path(args.prepare))
    meta = prepare.load_meta(Path(args.data))
    splits = {s: prepare.load_split(s, Path(args.data)) for s in ("val", "test")}
    train_tokens = prepare.load_split("train", Path(args.data))
    warm_seconds = None  # spent before the go
    if args.go:
        if wait_for_go(Path(args.go)) != "go":
            for proc in (first, spare):
                proc.kill()
                proc.wait()
            return {"status": "not_run", "message": "training did not end cleanly"}
        warm_seconds, t0 = time.monotonic() - t0, time.monotonic()
    deadline = t0 + args.timeout_s
    scorer = ModelProxy(first, meta.vocab_size, deadline).go()
    checker = FreshWorker(
        lambda: ModelProxy(start_worker(args, sandbox), meta.vocab_size, deadline).go(),
        before=scorer.close,
    )
    if two_fit_at_start(args):
        checker.prestart(ModelProxy(spare, meta.vocab_size, deadline) if spare else None)
    elif spare is not None:  # it would share the memory ceiling with the scorer's load
        spare.kill()
        spare.wait()
    rng = random.Random(secrets.randbits(64))
    checks = BehaviourChecks(
        prepare, train_tokens, meta.vocab_size, rng, prepare.CHECK_TOLERANCE
    )
    result: dict = {
        "status": "evaluated",
        "message": "ok",
        "val_bpb": None,
        "test_bpb": None,
        "warm_seconds": warm_seconds,
    }
    try:
        scorer.wait_ready()
        result["ready_seconds"] = time.monotonic() - t0  # worker started, model loaded
        if not checker.started_early and room_for_two(first, args.mem_limit_mb):
            checker.prestart()  # its start-up overlaps the scoring
        t_score = time.monotonic()
        for split, tokens in splits.items():
            n_windows = len(prepare.eval_windows(len(tokens), prepare.SEQ_LEN))
            checks.start_split(split, n_windows, CHECK_ROWS_PER_SPLIT)
            bpb = prepare.evaluate_bpb(
                scorer,
                tokens,
                meta.token_bytes,
                prepare.SEQ_LEN,
                batch_size=args.batch_size,
                device="cpu",
                seed=rng.randrange(2**63),
                observe=checks,
            )
            result[f"{split}_bpb"] = bpb.bpb
            result[f"{split}_tokens"] = bpb.n_tokens
            result[f"{split}_bytes"] = bpb.n_bytes
        result["score_seconds"] = time.monotonic() - t_score
        t_check = time.monotonic()
        # the probe's base input goes to the scorer; its changed inputs, like the kept
        # batches, to the fresh checker (started on its first call, after the scorer closed)
        probe = prepare.causality_probe(
            scorer, meta.vocab_size, prepare.SEQ_LEN, "cpu", seed=rng.randrange(2**31),
            check_fn=checker,
        )
        result["probe"] = {
            "ok": probe.ok,
            "max_change": probe.max_change,
            "first_bad_position": probe.first_bad_position,
        }
        if not probe.ok:
            raise NotCausal(
                f"logits at position {probe.first_bad_position} changed when later "
                f"tokens changed (log-probabilities moved by {probe.max_change:.3g} nats, "
                "answered by a fresh model process); attention must be causal and each "
                "row independent of the others"
            )
        result["checked_rows"] = checks.run(checker, args.batch_size)
        result["check_seconds"] = time.monotonic() - t_check
        result["checker_started_early"] = checker.started_early
        result["checker_wait_seconds"] = checker.wait_seconds  # waited for it to be ready
    except NotCausal as exc:
        result.update(status="causality_violation", message=str(exc), val_bpb=None, test_bpb=None)
    except prepare.NonFiniteLogits as exc:
        result.update(status="nan", message=str(exc), val_bpb=None, test_bpb=None)
    except (WorkerError, prepare.HarnessError) as exc:
        result.update(status="contract_error", message=str(exc), val_bpb=None, test_bpb=None)
    finally:
        scorer.close()
        checker.close()
    result["eval_seconds"] = time.monotonic() - t0
    result["model_calls"] = scorer.calls + checker.calls
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m arena.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--worktree", required=True, help="the candidate's worktree (holds train.py)")
    p.add_argument("--out", required=True, help="its EVOLVE_OUT (model.pt, build.json)")
    p.add_argument("--data", required=True, help="the data cache (EVOLVE_DATA)")
    p.add_argument(
        "--prepare", required=True, help="a trusted copy of prepare.py (the root commit's)"
    )
    p.add_argument("--result", required=True, help="where to write the JSON result")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mem-limit-mb", type=int, default=8192)
    p.add_argument("--sandbox", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--timeout-s", type=float, default=600.0, help="from the go on")
    p.add_argument(
        "--go",
        help="start warm: start the workers and load the data, then wait until the runner "
        "writes this file (\"go\": evaluate; anything else: exit without a result)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = run(args)
    except Exception as exc:  # the arena's own fault (data missing...): reported, never lost
        log.exception("evaluation failed")
        result = {"status": "arena_error", "message": f"evaluation failed: {exc}"}
    tmp = Path(args.result + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, args.result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
