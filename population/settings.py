"""A run's settings: what the user chose when the run started, kept with the run.

Flow: `evolve` reads program.md and its flags into `RunSettings` at the start of a run
and records them in the store (`Store.set_run_settings`) before the run directory
appears; `evolve --resume` reads them back (`stored_settings`) and applies the flags
given again (`resume_settings`), so a resumed run trains with the same budget,
population, seeds, model, devices and data as before. A flag that contradicts a
setting that changes what a measurement means is refused with `SettingsConflict`;
stopping criteria (`--generations`) and the simulated proposer's latency may be moved
on resume, since they change when the run stops or how long it waits, not a score.

What it does not do: check that the settings can run (population.preflight does) or
build anything from them (the CLI does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.errors import EvolveError
from population.program import ProgramConfig, parse_program
from population.store import Store

SIM_DEFAULTS = {"noise": 0.01, "run_seconds": 0.05, "slots": 2, "propose_seconds": 0.0}


class SettingsError(EvolveError):
    """A setting cannot be used (the message names the flag and what it must be)."""


class SettingsConflict(SettingsError):
    """A flag given with --resume contradicts the run's recorded settings."""


@dataclass(frozen=True)
class RunSettings:
    program: dict[str, Any]  # ProgramConfig's fields (the prose stays in the run's program.md)
    mode: str = "real"  # "real" or "simulate"
    simulate: dict[str, float] = field(default_factory=lambda: dict(SIM_DEFAULTS))
    data_dir: str | None = None  # None: EVOLVE_DATA or prepare.py's default, resolved at start
    ray: str | None = None  # None: local executor; "local" or a cluster address
    unconfined: bool = False  # the user accepted running candidates without bubblewrap

    def config(self, prose: str) -> ProgramConfig:
        values = dict(self.program)
        values["devices"] = tuple(values.get("devices") or ())
        known = {f.name for f in dataclasses.fields(ProgramConfig)}
        cfg = ProgramConfig(**{k: v for k, v in values.items() if k in known}, prose=prose)
        cfg.validate()
        return cfg

    def as_store(self) -> dict[str, Any]:
        return {"program": self.program, "mode": self.mode, "simulate": self.simulate,
                "data_dir": self.data_dir, "ray": self.ray, "unconfined": self.unconfined}


def program_fields(cfg: ProgramConfig) -> dict[str, Any]:
    """The config as JSON-ready values, without the prose."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "prose"}
    out["devices"] = list(cfg.devices)
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    devices = tuple(args.devices.split(",")) if args.devices else None
    return {"generations": args.generations, "budget_s": args.budget, "population": args.population,
            "model": args.model, "seed": args.seed, "devices": devices,
            "local_model": getattr(args, "local_model", None)}


def _sim(args: argparse.Namespace, base: dict[str, float]) -> dict[str, float]:
    given = {"noise": args.sim_noise, "run_seconds": args.sim_run_seconds, "slots": args.sim_slots,
             "propose_seconds": args.sim_propose_seconds}
    sim = {k: (float(v) if v is not None else float(base.get(k, SIM_DEFAULTS[k]))) for k, v in given.items()}
    if sim["slots"] < 1:
        raise SettingsError("--sim-slots must be at least 1")
    for k in ("noise", "run_seconds", "propose_seconds"):
        if sim[k] < 0:
            raise SettingsError(f"--sim-{k.replace('_', '-')} must be >= 0")
    return sim


def new_settings(args: argparse.Namespace, program_text: str, source: str) -> tuple[RunSettings, ProgramConfig]:
    """Settings of a new run: program.md's front matter, then the flags."""
    cfg = parse_program(program_text, source).with_overrides(**_overrides(args))
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    settings = RunSettings(program_fields(cfg), "simulate" if args.simulate else "real",
                           _sim(args, SIM_DEFAULTS), data_dir, args.ray, bool(args.unconfined))
    return settings, cfg


def stored_settings(store: Store, program_text: str, source: str) -> RunSettings:
    """The settings a run recorded. Runs made before settings were recorded fall back on
    their first session's configuration and their own program.md."""
    rec = store.run_settings()
    if rec:
        return RunSettings(rec["program"], rec.get("mode", "real"), {**SIM_DEFAULTS, **rec.get("simulate", {})},
                           rec.get("data_dir"), rec.get("ray"), bool(rec.get("unconfined", False)))
    sessions = store.sessions()
    program = json.loads(sessions[0]["config"]) if sessions else program_fields(parse_program(program_text, source))
    return RunSettings(program, store.get_meta("mode", "real"), {**SIM_DEFAULTS, **store.get_meta("simulate", {})})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resume_settings(stored: RunSettings, args: argparse.Namespace) -> tuple[RunSettings, list[str]]:
    """The stored settings with the flags given on --resume applied. Returns the
    settings and a list of what changed (only stopping criteria may change); raises
    SettingsConflict naming the flag and the run's value otherwise."""
    if args.program is not None:
        raise SettingsConflict("--program applies to a new run; a resumed run keeps its own program.md "
                               "(drop --program)")
    flags = {"budget_s": "--budget", "population": "--population", "model": "--model", "seed": "--seed",
             "devices": "--devices", "local_model": "--local-model"}
    given = _overrides(args)
    for name, flag in flags.items():
        value = given[name]
        if value is None:
            continue
        have = stored.program.get(name)
        want = list(value) if name == "devices" else value
        if not _same(have, want):
            shown = ",".join(have) if name == "devices" and have else have
            raise SettingsConflict(f"this run was started with {flag} {shown}; a resumed run keeps its "
                                   f"settings: drop {flag}, or start a new run with another --run-dir")
    others = [("--simulate", args.simulate and stored.mode != "simulate", "is a real run: drop --simulate"),
              ("--ray", args.ray is not None and args.ray != stored.ray,
               f"ran with --ray {stored.ray}" if stored.ray else "ran without --ray"),
              ("--data-dir", args.data_dir is not None and str(Path(args.data_dir).resolve()) != stored.data_dir,
               f"used the data at {stored.data_dir or 'the default data directory'}"),
              ("--unconfined", bool(args.unconfined) and not stored.unconfined,
               "was started confined (bubblewrap)")]
    for flag, conflict, why in others:
        if conflict:
            raise SettingsConflict(f"this run {why}; a resumed run keeps its settings: drop {flag}, "
                                   "or start a new run with another --run-dir")
    sim = _sim(args, stored.simulate)
    if {k: v for k, v in sim.items() if k != "propose_seconds"} != \
            {k: v for k, v in stored.simulate.items() if k != "propose_seconds"}:
        raise SettingsConflict("this run was started with other --sim-* values; a resumed run keeps its "
                               "settings: drop them, or start a new run with another --run-dir")
    changed = []
    program = dict(stored.program)
    if args.generations is not None and args.generations != program.get("generations"):
        changed.append(f"generations {program.get('generations')} -> {args.generations}")
        program["generations"] = args.generations
    if sim["propose_seconds"] != stored.simulate.get("propose_seconds"):  # a proposer's latency, not a measurement
        changed.append(f"simulated proposals {stored.simulate.get('propose_seconds')} s -> {sim['propose_seconds']} s")
    return dataclasses.replace(stored, program=program, simulate=sim), changed
