"""A simulated arena and a deterministic proposer: the population loop without training.

Flow: `SimulatedArena` implements `arena.protocol.Arena` (submit, poll, cancel,
free_slots, busy, close). For each `RunRequest` it reads `train.py` at the request's commit from
the run's git repository, parses the module-level knob constants, and reports a noisy
val_bpb and peak memory from a synthetic landscape (`Landscape`) after an optional
simulated run time. `KnobProposer` implements the `agents.proposal.Proposer` protocol by
changing one knob constant, deterministically given the context. Tests, `evolve
--simulate` and the benchmarks use them; they also show what the real parts must do.

Noise model: on seed s, observed = true + sigma * (rho * z(s) + sqrt(1 - rho^2) * z(file, s)):
part of a seed's luck is shared by every candidate run on that seed (so paired
comparisons cancel it), part is idiosyncratic. Identical files on identical seeds give
identical results. Optionally the noise also depends on *when* a run is made, as on a
shared machine whose budget is wall time (`Landscape.drift`, `spike_prob`, `hetero`,
`tail_df`; all off by default): slow load drift, load spikes that hit every run of a
batch (the runs submitted together), a noise level that differs between candidates, and
heavy-tailed idiosyncratic noise. The arena's submission count is its clock and a batch
is the runs submitted between two polls that returned results (they start together and
share the machine), so then a run's result depends on when it is submitted.

Training curves (for the evaluation cascade): with `checkpoints` > 0 the arena runs on a
virtual clock: every `poll` advances each running run by 1/checkpoints of its budget,
`progress()` shows the claimed training loss at the fractions passed so far, and a
cancelled run has used only what it ran (`device_runs` counts the budgets spent). The
loss at fraction f (`Landscape.partial`) is the run's true value and load, plus (1 - f)
times an early-training offset that depends on the knobs the way real curves do (a larger
model or a longer warm-up is behind early, a higher learning rate ahead) and on the
candidate (`curve_shape` sigmas), plus noise drawn apart from the final result's: the
early ranking is informative but not the final one.

What it does not do: train, sandbox or measure anything real. Its numbers are
synthetic and say nothing about a real train.py.
"""

from __future__ import annotations

import ast
import collections
import hashlib
import heapq
import itertools
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.proposal import InvalidEdit, Proposal, ProposalContext
from arena.progress import RunProgress, from_curve
from arena.protocol import ArenaClosed
from arena.records import RunOutcome, RunRequest, RunResult, Status, unmeasured

log = logging.getLogger(__name__)

SIM_TRAIN_PY = '''"""Simulated train.py for `evolve --simulate`.

Only the constants below matter: population.simulated scores them on a synthetic,
noisy landscape. Nothing here trains.
"""

DEPTH = 4
N_EMBD = 128
BATCH_SIZE = 16
LEARNING_RATE = 0.003
WARMUP_FRAC = 0.05
WEIGHT_DECAY = 0.1
DROPOUT = 0.1


def build_model(**kwargs):
    raise RuntimeError("simulated train.py: there is no model to build; population.simulated scores the constants")


if __name__ == "__main__":
    print("simulated train.py: scored by population.simulated, nothing to train")
'''


@dataclass(frozen=True)
class Knob:
    name: str
    log_scale: bool
    integer: bool
    lo: float
    hi: float


KNOBS: tuple[Knob, ...] = (
    Knob("DEPTH", False, True, 1, 32),
    Knob("N_EMBD", True, True, 16, 4096),
    Knob("BATCH_SIZE", True, True, 1, 1024),
    Knob("LEARNING_RATE", True, False, 1e-5, 1.0),
    Knob("WARMUP_FRAC", False, False, 0.0, 0.9),
    Knob("WEIGHT_DECAY", False, False, 0.0, 1.0),
    Knob("DROPOUT", False, False, 0.0, 0.9),
)
_KNOB = {k.name: k for k in KNOBS}
_DEFAULTS = {"DEPTH": 4, "N_EMBD": 128, "BATCH_SIZE": 16, "LEARNING_RATE": 0.003,
             "WARMUP_FRAC": 0.05, "WEIGHT_DECAY": 0.1, "DROPOUT": 0.1}


def read_knobs(train_py: str) -> dict[str, float]:
    """Module-level numeric constants in UPPER_CASE (ints and floats)."""
    knobs: dict[str, float] = {}
    for node in ast.parse(train_py).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    knobs[name] = value
    return knobs


def _gauss(*key: object) -> float:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).gauss(0.0, 1.0)


@dataclass(frozen=True)
class Landscape:
    """The synthetic objective. Capacity (DEPTH x N_EMBD^2) trades val_bpb against
    memory, so the front is a real trade-off; the other knobs have one optimum each."""

    sigma: float = 0.01  # seed-to-seed standard deviation of val_bpb
    rho: float = 0.7  # share of a seed's luck common to all candidates
    mem_rel_noise: float = 0.002
    mem_limit_mb: float = 8000.0  # above this the run "OOMs"
    salt: int = 0  # another salt, another (equally distributed) draw of the noise
    # time-dependent noise (t: the run's submission index, batch: the runs submitted together)
    drift: float = 0.0  # amplitude of slow load drift, in sigmas
    spike_prob: float = 0.0  # probability that a batch is hit by a load spike
    spike_size: float = 6.0  # a spike adds spike_size * sigma * (1 + Exp(1)) to every run of its batch
    hetero: float = 0.0  # per-candidate noise scale exp(hetero * N(0, 1))
    tail_df: float = 0.0  # idiosyncratic noise Student t with this many degrees of freedom (0: normal)
    curve_shape: float = 1.0  # a candidate's own early-training offset, in sigmas (training curves only)

    def true(self, knobs: dict[str, float]) -> tuple[float, float]:
        k = {**_DEFAULTS, **knobs}
        depth, width, batch = k["DEPTH"], k["N_EMBD"], k["BATCH_SIZE"]
        params = 12.0 * depth * width * width
        cap = math.log2(max(params, 1.0) / (12.0 * 4 * 128 * 128))
        val = 1.0
        val += -0.08 * cap + 0.012 * cap * cap
        val += 0.01 * math.log(max(width / max(depth, 1), 1e-3) / 64.0) ** 2
        val += 0.04 * math.log(max(k["LEARNING_RATE"], 1e-9) / 0.01) ** 2
        val += 0.02 * math.log(max(batch, 1) / 32.0) ** 2
        val += 2.0 * (k["WARMUP_FRAC"] - 0.1) ** 2
        val += 0.5 * (k["WEIGHT_DECAY"] - 0.05) ** 2
        val += 0.3 * k["DROPOUT"] ** 2
        mem = 100.0 + params * 16.0 / 1e6 + batch * depth * width * 256 * 32.0 / 1e6
        return val, mem

    def observe(self, knobs: dict[str, float], seed: int, t: int = 0, batch: int = 0) -> tuple[float, float]:
        val, mem = self.true(knobs)
        ident = tuple(sorted(knobs.items()))
        own = _gauss("run", self.salt, ident, seed)
        if self.tail_df > 0:  # Student t with unit variance, from the same deterministic draw
            r = random.Random(f"tail:{self.salt}:{ident}:{seed}")
            chi2 = sum(r.gauss(0.0, 1.0) ** 2 for _ in range(int(self.tail_df)))
            own = own / math.sqrt(chi2 / self.tail_df) * math.sqrt((self.tail_df - 2) / self.tail_df)
        scale = math.exp(self.hetero * _gauss("hetero", self.salt, ident)) if self.hetero else 1.0
        z = self.rho * _gauss("seed", self.salt, seed) + math.sqrt(1 - self.rho**2) * scale * own
        mem_z = _gauss("mem", self.salt, ident, seed)
        return val + self.sigma * (z + self.load(t, batch)), mem * (1.0 + self.mem_rel_noise * mem_z)

    def partial(self, knobs: dict[str, float], seed: int, fraction: float, t: int = 0, batch: int = 0) -> float:
        """The claimed training loss at `fraction` of the budget (see the module docstring)."""
        k = {**_DEFAULTS, **knobs}
        ident = tuple(sorted(knobs.items()))
        cap = math.log2(max(12.0 * k["DEPTH"] * k["N_EMBD"] ** 2, 1.0) / (12.0 * 4 * 128 * 128))
        early = (0.5 + 0.05 * cap - 0.1 * math.log(max(k["LEARNING_RATE"], 1e-9) / 0.003)
                 + 0.3 * (k["WARMUP_FRAC"] - 0.05) + self.sigma * self.curve_shape * _gauss("shape", self.salt, ident))
        z = (self.rho * _gauss("pseed", self.salt, seed, fraction)
             + math.sqrt(1 - self.rho**2) * _gauss("prun", self.salt, ident, seed, fraction))
        return self.true(knobs)[0] + (1.0 - fraction) * early + self.sigma * (z + self.load(t, batch))

    def load(self, t: int, batch: int) -> float:
        """The machine's load at run t of batch `batch`, in sigmas (0 with time noise off)."""
        out = 0.0
        if self.drift:
            p1, p2 = 1.0 + abs(_gauss("phase1", self.salt)), 1.0 + abs(_gauss("phase2", self.salt))
            out += self.drift * (math.sin(2 * math.pi * t / 160.0 + p1) + 0.5 * math.sin(2 * math.pi * t / 47.0 + p2))
        if self.spike_prob:
            r = random.Random(f"spike:{self.salt}:{batch}")
            if r.random() < self.spike_prob:
                out += self.spike_size * (1.0 + r.expovariate(1.0))
        return out

    def failure(self, knobs: dict[str, float]) -> tuple[Status, str] | None:
        k = {**_DEFAULTS, **knobs}
        if k["DEPTH"] < 1 or k["N_EMBD"] < 1 or k["BATCH_SIZE"] < 1:
            return Status.CRASHED, "ValueError: DEPTH, N_EMBD and BATCH_SIZE must be positive"
        if k["LEARNING_RATE"] > 0.1:
            return Status.NAN, "loss became nan at step 12 (learning rate too high)"
        if self.true(knobs)[1] > self.mem_limit_mb:
            return Status.OOM, f"out of memory (simulated limit {self.mem_limit_mb:.0f} MB)"
        return None


@dataclass(order=True)
class _Pending:
    ready_at: float
    order: int
    result: RunResult = field(compare=False)


class SimulatedArena:
    """An `arena.protocol.Arena` that scores train.py knobs on a `Landscape`.

    `read_train_py(commit)` fetches the candidate's file (from the run's git repository);
    `run_seconds` is how long a simulated run occupies its slot. Runs beyond the free
    slots queue and start when a slot frees (at the time the slot freed). With
    `checkpoints` > 0 time is virtual instead: each `poll` is 1/checkpoints of a run
    (module docstring)."""

    def __init__(self, read_train_py: Callable[[str], str], slots: int = 2,
                 landscape: Landscape | None = None, run_seconds: float = 0.0,
                 device_type: str = "sim", device_name: str = "simulated", checkpoints: int = 0):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.read_train_py = read_train_py
        self.slots = slots
        self.landscape = landscape or Landscape()
        self.run_seconds = run_seconds
        self.device_type = device_type
        self.device_name = device_name
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []  # running, by finishing time
        self._queued: collections.deque[RunResult] = collections.deque()
        self._done: list[RunResult] = []  # cancelled, waiting for poll
        self._order = itertools.count()
        self._closed = False
        self._files: dict[str, str] = {}
        self.submitted = 0
        self.checkpoints = checkpoints
        self.device_runs = 0.0  # budgets spent, in runs (a cancelled run counts the part it ran)
        self._tick = 0  # the virtual clock (checkpoints > 0), in 1/checkpoints of a run
        self._epoch = 0  # runs submitted between two polls that return results start together

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._closed else max(0, self.slots - len(self._pending) - len(self._queued))

    def busy(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._queued)

    def submit(self, req: RunRequest) -> None:
        if req.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {req.budget_s}")
        if req.commit not in self._files:
            self._files[req.commit] = self.read_train_py(req.commit)
        with self._lock:
            result = self._score(req, self._files[req.commit], self.submitted, self._epoch)
            if self._closed:
                raise ArenaClosed("the simulated arena is closed")
            self.submitted += 1
            if len(self._pending) < self.slots:
                self._start(self._now(), result)
            else:
                self._queued.append(result)

    def _start(self, at: float, result: RunResult) -> None:
        length = self.checkpoints or self.run_seconds
        heapq.heappush(self._pending, _Pending(at + length, next(self._order), result))

    def _now(self) -> float:
        return self._tick if self.checkpoints else time.monotonic()

    def _ran(self, p: _Pending) -> float:
        """The share of its budget a running run has used (virtual clock only; else 0)."""
        if not self.checkpoints:
            return 0.0
        return min(1.0, max(0.0, (self._tick - (p.ready_at - self.checkpoints)) / self.checkpoints))

    def progress(self) -> dict[tuple[str, int], RunProgress]:
        """Running runs' claimed training loss at the fractions passed (virtual clock only)."""
        with self._lock:
            out = {}
            for p in self._pending:
                ran = self._ran(p)
                points = [pt for pt in from_curve(p.result.claimed.get("progress")) if pt.fraction <= ran + 1e-9]
                if points:
                    out[(p.result.candidate_id, p.result.seed)] = RunProgress(points, p.result.peak_mem_mb)
            return out

    def _score(self, req: RunRequest, train_py: str, t: int, batch: int) -> RunResult:
        base = {"candidate_id": req.candidate_id, "commit": req.commit, "seed": req.seed,
                "device_type": self.device_type, "device_name": self.device_name}
        try:
            knobs = read_knobs(train_py)
        except SyntaxError as exc:
            return RunResult(status=Status.CRASHED, message=f"SyntaxError: {exc}", **base)
        failed = self.landscape.failure(knobs)
        if failed is not None:
            return RunResult(status=failed[0], message=failed[1], **base)
        val, mem = self.landscape.observe(knobs, req.seed, t, batch)
        claimed: dict = {"val_bpb": val}
        if self.checkpoints:
            claimed["progress"] = [[k / self.checkpoints, self.landscape.partial(knobs, req.seed, k / self.checkpoints,
                                                                                t, batch)]
                                   for k in range(1, self.checkpoints + 1)]
        return RunResult(
            status=Status.EVALUATED, val_bpb=val, test_bpb=val + 0.002, peak_mem_mb=mem,
            training_seconds=req.budget_s, wall_seconds=self.run_seconds, claimed=claimed, **base,
        )

    def poll(self, timeout: float | None = 0.0) -> list[RunResult]:
        with self._lock:
            wait = 0.0 if self._done or self.checkpoints else (timeout if timeout is not None else 3600.0)
            if self._pending:
                wait = min(wait, max(0.0, self._pending[0].ready_at - time.monotonic()))
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            if self.checkpoints and self._pending:
                self._tick += 1
            now = self._now()
            out, self._done = self._done, []
            while self._pending and self._pending[0].ready_at <= now:
                p = heapq.heappop(self._pending)
                out.append(p.result)
                self.device_runs += 1.0
                if self._queued:  # the freed slot takes the next queued run at once
                    self._start(p.ready_at, self._queued.popleft())
            if out:
                self._epoch += 1
            return out

    def cancel(self, candidate_id: str, seed: int | None = None) -> int:
        def match(r: RunResult) -> bool:
            return r.candidate_id == candidate_id and seed in (None, r.seed)

        with self._lock:
            if self._closed:
                return 0
            stopped = [p for p in self._pending if match(p.result)]
            self.device_runs += sum(self._ran(p) for p in stopped)
            hit = [p.result for p in stopped] + [r for r in self._queued if match(r)]
            self._pending = [p for p in self._pending if not match(p.result)]
            heapq.heapify(self._pending)
            self._queued = collections.deque(r for r in self._queued if not match(r))
            self._done += [_cancelled(r) for r in hit]
            while self._queued and len(self._pending) < self.slots:
                self._start(self._now(), self._queued.popleft())
            return len(hit)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._done += [_cancelled(p.result) for p in sorted(self._pending)]
            self._done += [_cancelled(r) for r in self._queued]
            self._pending.clear()
            self._queued.clear()


def _cancelled(r: RunResult) -> RunResult:
    req = RunRequest(r.candidate_id, r.commit, r.seed, 1.0)
    return unmeasured(req, RunOutcome.CANCELLED, "cancelled by the simulated arena; not measured",
                      device_type=r.device_type, device_name=r.device_name)


PERSONA_STEP = {"explorer": 1.0, "tuner": 0.35}
SIM_PREFERENCES = {"explorer": "frontier", "tuner": "best"}


class KnobProposer:
    """Changes one known knob constant of the parent's train.py. The choice is a pure
    function of (parent's train.py, persona, hypotheses already tried), so a resumed run gets
    the same proposals. Persona "explorer" takes large steps, "tuner" small ones."""

    def __init__(self, delay_s: float = 0.0, model: str = "deterministic-knobs", salt: int = 0):
        self.delay_s = delay_s
        self.model = model
        self.salt = salt

    def propose(self, ctx: ProposalContext) -> Proposal | InvalidEdit:
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            knobs = read_knobs(ctx.parent_train_py)
        except SyntaxError as exc:
            return InvalidEdit(ctx.parent_commit, ctx.persona, self.model, f"parent does not parse: {exc}")
        names = [k.name for k in KNOBS if k.name in knobs]
        if not names:
            return InvalidEdit(ctx.parent_commit, ctx.persona, self.model, "no known knob constant in train.py")
        key = "\n".join([str(self.salt), ctx.parent_train_py, ctx.persona, *ctx.tried])
        rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
        step = PERSONA_STEP.get(ctx.persona, 0.6)
        for _ in range(20):
            knob = _KNOB[rng.choice(names)]
            old = knobs[knob.name]
            new = _mutate(knob, old, step, rng)
            if new != old:
                break
        else:
            return InvalidEdit(ctx.parent_commit, ctx.persona, self.model, "no knob change found")
        text = set_knob(ctx.parent_train_py, knob.name, new)
        return Proposal(
            parent_commit=ctx.parent_commit, persona=ctx.persona, model=self.model,
            hypothesis=f"{knob.name} {old!r} -> {new!r}", train_py=text, edit_format="knobs",
        )


def _mutate(knob: Knob, old: float, step: float, rng: random.Random) -> float:
    if knob.log_scale:
        new = float(old) * math.exp(rng.gauss(0.0, 0.5 * step))
    elif knob.integer:
        new = float(old) + rng.choice([-1, 1]) * max(1, round(abs(rng.gauss(0.0, 2.0 * step))))
    else:
        new = float(old) + rng.gauss(0.0, 0.1 * step)
    new = min(max(new, knob.lo), knob.hi)
    if knob.integer:
        return round(new)
    return float(f"{new:.4g}")


def set_knob(train_py: str, name: str, value: float) -> str:
    """Replace the value of a module-level `NAME = value` line, keeping any comment."""
    pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)
    text, n = pattern.subn(lambda m: f"{m.group(1)}{value!r}{m.group(3)}", train_py, count=1)
    if n != 1:
        raise ValueError(f"no line '{name} = ...' in train.py")
    return text


def prepare_py_text() -> str:
    """The harness file a run's root commit holds (read, never imported)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("prepare")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("prepare.py is not importable from here")
    return Path(spec.origin).read_text(encoding="utf-8")


def simulated_loop(run_dir, config, *, slots: int = 2, sigma: float = 0.01, run_seconds: float = 0.0,
                   proposer=None, personas: list[str] | None = None, program_md: str = "", on_event=None,
                   salt: int = 0, preferences: dict[str, str] | None = None,
                   crossover_personas: set[str] | None = None, landscape: Landscape | None = None,
                   checkpoints: int = 0):
    """Build (or reopen) a simulated run in `run_dir`: real git repository, real store,
    simulated arena, deterministic proposer unless one is given. Returns
    (loop, store, repo, arena); the caller closes store and arena. `landscape` replaces
    the default `Landscape(sigma, salt)`; `checkpoints` > 0 runs the arena on its virtual
    clock with training curves (for the evaluation cascade)."""
    from pathlib import Path

    from arena.repo import ExperimentRepo
    from population.loop import GenerationLoop
    from population.store import Store, store_path

    run_dir = Path(run_dir)
    if (run_dir / ".git").exists():
        repo = ExperimentRepo.open(run_dir)
    else:
        repo = ExperimentRepo.create(run_dir, SIM_TRAIN_PY, prepare_py_text(), program_md or "+++\n+++\n")
    store = Store.open(store_path(run_dir))
    arena = SimulatedArena(lambda c: repo.read_file(c, "train.py"), slots=slots,
                           landscape=landscape or Landscape(sigma=sigma, salt=salt), run_seconds=run_seconds,
                           checkpoints=checkpoints)
    loop = GenerationLoop(store, repo, arena, proposer or KnobProposer(salt=salt), config,
                          personas or ["explorer", "tuner"], slots=slots, on_event=on_event,
                          preferences=preferences or SIM_PREFERENCES, crossover_personas=crossover_personas)
    return loop, store, repo, arena
