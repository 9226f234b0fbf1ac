"""Preflight: build a proposed train.py and run it for one step on CPU before it is queued.

Flow: the proposer (agents.proposer) calls a `Preflight` on every valid child that
passed the novelty gate, before the loop commits it and the arena spends device time on
it. The child and the run's trusted prepare.py are copied to a private temporary
directory; a small driver, run there in the same sandbox as training (arena.sandbox:
no network, read-only system, the train split only, a memory ceiling, a credential-free
environment), imports the harness, makes its budget clock stop after one optimizer
step, caps the batch at a few sequences, runs the child's `main()` (or its `if __name__ ==
"__main__":` block), then does what the
evaluator will do: rebuilds the model with `build_model(**build_kwargs)` from the
kwargs as JSON gives them back, loads the trained weights and checks that a full
context (prepare.SEQ_LEN tokens) gives finite logits of shape [1, T, vocab]. It takes
a few seconds. A failure is an `agents.novelty.Refusal` (kind "preflight") whose reason
is the error's last line; the proposer sends it back to the model as a repair request,
so the arena never sees the child.

What it does not do: measure anything (one step on a tiny batch says nothing about
val_bpb, memory or speed), catch failures that need the full batch or the full budget
(an out-of-memory on the GPU, a NaN after 500 steps), or run on a GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agents.novelty import Refusal
from arena.devices import Slot
from arena.guards import scrub_env
from arena.runner import log_tail, supervised, traceback_tail
from arena.sandbox import Sandbox

log = logging.getLogger(__name__)

OK_MARK = "PREFLIGHT OK"
PREFLIGHT_SLOT = Slot("cpu:preflight", "cpu", "preflight", None, 1)
DRIVER = '''\
"""Preflight driver (written by arena.preflight): one step of train.py, then the evaluator's rebuild."""
import json
import math
import sys

import prepare


class OneStepClock(prepare.BudgetClock):
    @property
    def done(self):
        return self.steps >= 1

    def progress(self):
        return 1.0 if self.steps >= 1 else 0.0


saved = {}


def save_for_eval(model, build_kwargs, stats=None):
    saved["state"] = {k.removeprefix("_orig_mod."): v.detach().cpu() for k, v in model.state_dict().items()}
    saved["kwargs"] = build_kwargs


prepare.BudgetClock = OneStepClock
prepare.save_for_eval = save_for_eval
prepare.print_summary = lambda stats: None

import torch  # noqa: E402

import train  # noqa: E402

if isinstance(getattr(train, "BATCH_SIZE", None), int):
    train.BATCH_SIZE = max(1, min(train.BATCH_SIZE, __BATCH__))
if callable(getattr(train, "main", None)):
    train.main()
else:  # the contract only asks for training under `if __name__ == "__main__":`; run that block
    import ast

    tree = ast.parse(open(train.__file__, encoding="utf-8").read())
    guard = ('__name__ == "__main__"', '"__main__" == __name__')
    body = [n for top in tree.body if isinstance(top, ast.If)
            and ast.unparse(top.test).replace("'", '"') in guard for n in top.body]
    exec(compile(ast.Module(body=body, type_ignores=[]), train.__file__, "exec"), vars(train))
if "state" not in saved:
    sys.exit("train.py never handed its model to prepare.save_for_eval")
kwargs = json.loads(json.dumps(saved["kwargs"]))
model = train.build_model(**kwargs)
model.load_state_dict(saved["state"])
model.eval()
vocab = prepare.load_meta().vocab_size
idx = torch.randint(0, vocab, (1, prepare.SEQ_LEN))
with torch.no_grad():
    logits = model(idx)
if tuple(logits.shape) != (1, prepare.SEQ_LEN, vocab):
    sys.exit(f"the rebuilt model's logits have shape {tuple(logits.shape)}, expected (1, {prepare.SEQ_LEN}, {vocab})")
if not torch.isfinite(logits.float()).all():
    sys.exit("the rebuilt model's logits are not finite")
print("__OK__", flush=True)
'''


@dataclass(frozen=True)
class PreflightResult:
    ok: bool
    seconds: float
    error: str  # the last line of the failure ('' when ok)
    log: str  # the output's tail


def run(train_py: str, prepare_py: str, data_dir: Path, sandbox: Sandbox, timeout_s: float = 120.0,
        batch_size: int = 2) -> PreflightResult:
    """One step of `train_py` on CPU in `sandbox`; see the module doc."""
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="evolve-preflight-"))
    try:
        work, out, home = tmp / "work", tmp / "out", tmp / "home"
        for d in (work, out, home):
            d.mkdir()
        (work / "train.py").write_text(train_py)
        (work / "prepare.py").write_text(prepare_py)
        (work / "_preflight.py").write_text(DRIVER.replace("__BATCH__", str(int(batch_size))).replace("__OK__", OK_MARK))
        env = scrub_env(os.environ)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update({
            "HOME": str(home), "EVOLVE_BUDGET_S": "1", "EVOLVE_SEED": "0", "EVOLVE_DEVICE": "cpu",
            "EVOLVE_OUT": str(out), "EVOLVE_DATA": str(Path(data_dir).resolve()), "EVOLVE_THREADS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1",
        })
        env.pop("PYTHONPATH", None)  # the child sees the harness beside it, nothing else of ours
        argv = sandbox.command([sys.executable, "_preflight.py"], cwd=work, writable=[work, out, home],
                               data_dir=Path(data_dir), readonly_files=[work / "prepare.py"])
        log_path = tmp / "preflight.log"
        # the arena's own supervisor: limits set in a single-threaded child, the whole
        # process tree killed at the time limit (the proposer calls this from a thread)
        report = supervised(argv, work, env, log_path, timeout_s, sandbox, PREFLIGHT_SLOT, None)
        text = log_tail(log_path)
        if report.get("timed_out"):
            return PreflightResult(False, time.monotonic() - t0,
                                   f"one step did not finish in {timeout_s:.0f} s", text[-4000:])
        if report.get("mem_killed"):
            return PreflightResult(False, time.monotonic() - t0,
                                   f"one step on a batch of {batch_size} went over the memory ceiling "
                                   f"({sandbox.mem_limit_mb} MB)", text[-4000:])
        if report.get("returncode") == 0 and OK_MARK in text:
            return PreflightResult(True, time.monotonic() - t0, "", text[-4000:])
        tail = traceback_tail(text, 20)
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        error = last or f"exited with code {report.get('returncode')} and no message"
        return PreflightResult(False, time.monotonic() - t0, error[:400], text[-4000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Preflight:
    """A check for `agents.build_proposer(checks=[...])`: one CPU step of each child.

    `prepare_py` is the run's trusted harness (the root commit's prepare.py);
    `data_dir` the prepared data (only its train split is visible inside)."""

    def __init__(self, prepare_py: str, data_dir: Path, sandbox: Sandbox | None = None,
                 timeout_s: float = 120.0, batch_size: int = 2) -> None:
        self.prepare_py = prepare_py
        self.data_dir = Path(data_dir)
        self.sandbox = sandbox or Sandbox(mem_limit_mb=4096)
        self.timeout_s = timeout_s
        self.batch_size = batch_size

    def __call__(self, ctx: object, proposal: object) -> Refusal | None:
        result = run(proposal.train_py, self.prepare_py, self.data_dir, self.sandbox,  # type: ignore[attr-defined]
                     self.timeout_s, self.batch_size)
        log.info("preflight %s in %.1fs%s", "passed" if result.ok else "failed", result.seconds,
                 "" if result.ok else f": {result.error}")
        if result.ok:
            return None
        return Refusal("preflight", f"the child failed a one-step trial run on CPU: {result.error}")
