"""The trusted evaluator: `python -m arena.evaluate` measures one trained candidate.

Flow: after a clean training run the runner starts this process. It never imports the
candidate. It starts `arena/eval_worker.py` in the sandbox (the worker imports train.py
without running its `__main__`, rebuilds the model with `build_model(**build.json)` and
loads `model.pt` with `weights_only=True`), then talks to it over a pipe: token ids go
out, logits come back. Everything that is measured is computed here, with the
harness's own functions from a trusted copy of prepare.py (the root commit's, never the
worktree's):
- `prepare.causality_probe` on random tokens, with a secret random seed;
- `prepare.evaluate_bpb` on the validation split, then on the sealed test split; while
  they run, some batches (chosen at random, always including the first) are sent a
  second time with every token after a random cut replaced by real text from elsewhere
  in the split, and the logits up to the cut must not move: a model that is causal only
  on random tokens is caught on real text too;
- the first batch is sent again at the end and must give the same logits (a model
  that keeps state between calls is refused).
Non-finite logits give `nan`; a worker that fails to import, build, load or answer in
time gives `contract_error`; failed causality checks give `causality_violation`.

It writes one JSON object to `--result`: status, message, val_bpb, test_bpb, probe.
What it does not do: train, trust any number the candidate wrote, or let the worker
see the test targets other than as the inputs every language model is given.
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
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

U32 = struct.Struct("<I")
WORKER = Path(__file__).resolve().parent / "eval_worker.py"
SPOT_RATE = 0.1  # share of evaluation batches that are also sent perturbed
TOLERANCE = 1e-3  # the harness probe's tolerance, relative to the largest logit


class WorkerError(Exception):
    """The model worker failed or broke the protocol (a contract error)."""


class NonFinite(Exception):
    """The model produced NaN or infinite logits."""


class NotCausal(Exception):
    """The model's logits depend on future tokens or on earlier calls."""


def load_trusted_prepare(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare"] = module
    spec.loader.exec_module(module)
    return module


class ModelProxy:
    """`logits_fn` for the harness: forwards token ids to the worker and checks what
    comes back (shape, dtype, finiteness) before the harness sees it."""

    def __init__(self, proc: subprocess.Popen, vocab_size: int, deadline: float) -> None:
        self.proc = proc
        self.vocab_size = vocab_size
        self.deadline = deadline
        self.calls = 0

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
        logits = torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())
        if not bool(torch.isfinite(logits).all()):
            raise NonFinite("the model produced non-finite logits (NaN or inf)")
        self.calls += 1
        return logits

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(b"Q" + U32.pack(0))
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class SpotChecked:
    """Wraps the proxy during evaluate_bpb: re-sends some batches with their suffix
    replaced by other real text and compares the logits up to the cut."""

    def __init__(self, fn, tokens, rng: random.Random, rate: float = SPOT_RATE) -> None:
        import numpy as np

        self.fn = fn
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.rng = rng
        self.rate = rate
        self.checks = 0
        self.first: tuple | None = None

    def __call__(self, idx):
        import torch

        out = self.fn(idx)
        if self.first is None:
            self.first = (idx.clone(), out.clone())
        b, t = idx.shape
        if t >= 3 and (self.checks == 0 or self.rng.random() < self.rate):
            cut = self.rng.randrange(1, t - 1)
            changed = idx.clone()
            for row in range(b):
                start = self.rng.randrange(0, max(1, len(self.tokens) - t))
                changed[row, cut + 1 :] = torch.from_numpy(
                    self.tokens[start + cut + 1 : start + t].copy()
                )
            if torch.equal(changed[:, cut + 1 :], idx[:, cut + 1 :]):
                changed[:, -1] = (changed[:, -1] + 1) % max(2, int(self.fn.vocab_size))
            again = self.fn(changed)
            scale = max(1.0, float(out.abs().max()))
            diff = (again[:, : cut + 1] - out[:, : cut + 1]).abs().amax(dim=(0, 2)) / scale
            if float(diff.max()) > TOLERANCE:
                first = int(torch.nonzero(diff > TOLERANCE)[0])
                raise NotCausal(
                    f"on real text, logits at position {first} changed when tokens after "
                    f"position {cut} changed (max change {float(diff.max()):.3g})"
                )
            self.checks += 1
        return out

    def replay_first(self) -> None:
        if self.first is None:
            return
        idx, out = self.first
        again = self.fn(idx)
        scale = max(1.0, float(out.abs().max()))
        change = float((again - out).abs().max()) / scale
        if change > TOLERANCE:
            raise NotCausal(
                f"the same input gave different logits on a later call (change "
                f"{change:.3g}): the model keeps state between calls"
            )


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


def run(args) -> dict:
    from arena.sandbox import Sandbox

    sandbox = Sandbox(args.mem_limit_mb, {"auto": None, "on": True, "off": False}[args.sandbox])
    deadline = time.monotonic() + args.timeout_s
    t0 = time.monotonic()
    proc = start_worker(args, sandbox)  # it imports torch while we do the same and load data
    import torch

    torch.set_num_threads(max(1, args.threads))
    prepare = load_trusted_prepare(Path(args.prepare))
    meta = prepare.load_meta(Path(args.data))
    val_tokens = prepare.load_split("val", Path(args.data))
    test_tokens = prepare.load_split("test", Path(args.data))
    proxy = ModelProxy(proc, meta.vocab_size, deadline)
    rng = random.Random(secrets.randbits(64))
    result: dict = {"status": "evaluated", "message": "ok", "val_bpb": None, "test_bpb": None}
    try:
        proxy.wait_ready()
        result["ready_seconds"] = time.monotonic() - t0  # worker started, model loaded
        probe = prepare.causality_probe(
            proxy, meta.vocab_size, prepare.SEQ_LEN, "cpu", seed=rng.randrange(2**31)
        )
        result["probe"] = {
            "ok": probe.ok,
            "max_change": probe.max_change,
            "first_bad_position": probe.first_bad_position,
        }
        if not probe.ok:
            raise NotCausal(
                f"logits at position {probe.first_bad_position} changed when later "
                f"tokens changed (max relative change {probe.max_change:.3g}); "
                "attention must be causal"
            )
        for split, tokens in (("val", val_tokens), ("test", test_tokens)):
            checked = SpotChecked(proxy, tokens, rng)
            bpb = prepare.evaluate_bpb(
                checked,
                tokens,
                meta.token_bytes,
                prepare.SEQ_LEN,
                batch_size=args.batch_size,
                device="cpu",
            )
            checked.replay_first()
            result[f"{split}_bpb"] = bpb.bpb
            result[f"{split}_tokens"] = bpb.n_tokens
            result[f"{split}_spot_checks"] = checked.checks
    except NotCausal as exc:
        result.update(status="causality_violation", message=str(exc), val_bpb=None, test_bpb=None)
    except NonFinite as exc:
        result.update(status="nan", message=str(exc), val_bpb=None, test_bpb=None)
    except (WorkerError, prepare.HarnessError) as exc:
        result.update(status="contract_error", message=str(exc), val_bpb=None, test_bpb=None)
    finally:
        proxy.close()
    result["eval_seconds"] = time.monotonic() - t0
    result["model_calls"] = proxy.calls
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
    p.add_argument("--timeout-s", type=float, default=600.0)
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
