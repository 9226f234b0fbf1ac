"""program.md: the human's lever. TOML front matter between `+++` lines, then prose.

Flow: `evolve` reads program.md (the run repository's copy once a run exists), the
command line overrides single settings, and the resulting `ProgramConfig` drives the
loop; the prose goes verbatim into every proposal's context.

    +++
    budget_s = 60            # training seconds per run
    population = 4           # children per generation
    model = "..."            # default litellm model of every persona (optional)
    local_model = "small"    # embedded model when no model is set: "small" (0.5B) or "large" (1.5B)
    [seeds]    root, initial, max, per_round, accept_p, futility_p, epsilon_scale, rescore_every,
               rescore_seeds
    [cascade]  stop_p, min_pairs   (stopping clearly worse children early; docs/search.md)
    [stop]     generations, target_val_bpb, max_cost_usd, max_hours
    [constraints]  max_peak_mem_mb, max_val_bpb
    [search]   lookahead, proposal_workers, bandit_floor, parent_floor, crossover_rate
    [personas.NAME]  model = "...", plus whatever the agents read
    +++
    prose...

What it does not do: guess. An unknown key, a wrong type or a TOML syntax error is a
`ProgramError` naming the file and line, and nothing starts.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.errors import EvolveError

FENCE = "+++"


class ProgramError(EvolveError):
    """program.md cannot be used; the message names the file and line."""

    def __init__(self, message: str, section: str | None = None, key: str | None = None):
        super().__init__(message)
        self.section = section
        self.key = key


@dataclass(frozen=True)
class ProgramConfig:
    budget_s: float = 60.0
    seed: int = 0
    population: int = 4
    devices: tuple[str, ...] = ()
    # [seeds]
    root_seeds: int = 3
    initial_seeds: int = 1
    max_seeds: int = 4
    seeds_per_round: int = 1
    accept_p: float = 0.1  # accept when P(no gain) <= accept_p / 2 (val_bpb; memory likewise)
    futility_p: float = 0.4  # stop racing a child whose P(no gain) is above this
    epsilon_scale: float = 0.5  # archive box size in single-run noise standard deviations
    rescore_every: int = 4
    rescore_seeds: int = 1
    # [cascade]
    cascade_stop_p: float = 0.4  # stop a child's first round once P(it ends better than its parent) <= this; 0: off
    cascade_min_pairs: int = 8  # finished pairs with progress lines needed before the cascade stops anything
    # [stop]
    generations: int = 10
    target_val_bpb: float | None = None
    max_cost_usd: float | None = None
    max_hours: float | None = None
    # [constraints]
    max_peak_mem_mb: float | None = None
    max_val_bpb: float | None = None
    # [search]
    lookahead: int = -1  # children of the next generation proposed early; -1: one per device slot
    proposal_workers: int = 2
    bandit_floor: float = 0.1
    parent_floor: float = 0.2
    crossover_rate: float = 0.25  # share of a crossover persona's children that merge two members
    # model = "...", api_base = "..." (defaults for every persona) and [personas.NAME]
    # tables: passed as they are to agents.build_proposer, which validates them
    model: str | None = None
    api_base: str | None = None
    local_model: str = "small"  # agents.local_model.LOCAL_MODEL_CHOICES
    personas: dict[str, dict] = field(default_factory=dict)
    prose: str = ""

    def with_overrides(self, **overrides: Any) -> ProgramConfig:
        """Command-line flags win over the front matter; `None` means "not given"."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "model" in given:
            model = given["model"]
            given["personas"] = {name: {**p, "model": model} for name, p in self.personas.items()}
        cfg = dataclasses.replace(self, **given)
        cfg.validate()
        return cfg

    def personas_config(self) -> dict:
        """The front matter's persona part, in the form agents.build_proposer reads."""
        out: dict = {"personas": {k: dict(v) for k, v in self.personas.items()}}
        if self.model:
            out["model"] = self.model
        if self.api_base:
            out["api_base"] = self.api_base
        return out

    def validate(self) -> None:
        checks = [
            (self.budget_s > 0, None, "budget_s", "must be positive"),
            (self.population >= 1, None, "population", "must be at least 1"),
            (self.root_seeds >= 2, "seeds", "root", "must be at least 2 (the noise floor needs a spread)"),
            (self.initial_seeds >= 1, "seeds", "initial", "must be at least 1"),
            (self.max_seeds >= self.initial_seeds, "seeds", "max", "must be >= seeds.initial"),
            (self.max_seeds <= 10, "seeds", "max", "must be at most 10 (the seed plan, population.noise)"),
            (self.rescore_seeds <= 10, "seeds", "rescore_seeds", "must be at most 10 (the seed plan)"),
            (self.population <= 50, None, "population", "must be at most 50 (the seed plan, population.noise)"),
            (self.seeds_per_round >= 1, "seeds", "per_round", "must be at least 1"),
            (0 < self.accept_p < 1, "seeds", "accept_p", "must be in (0, 1)"),
            (0 < self.futility_p <= 1, "seeds", "futility_p", "must be in (0, 1]"),
            (self.epsilon_scale > 0, "seeds", "epsilon_scale", "must be positive"),
            (self.rescore_every >= 0, "seeds", "rescore_every", "must be >= 0 (0: never)"),
            (self.rescore_seeds >= 0, "seeds", "rescore_seeds", "must be >= 0"),
            (0 <= self.cascade_stop_p < 0.5, "cascade", "stop_p", "must be in [0, 0.5) (0: the cascade is off)"),
            (self.cascade_min_pairs >= 4, "cascade", "min_pairs", "must be at least 4"),
            (self.generations >= 0, "stop", "generations", "must be >= 0"),
            (self.proposal_workers >= 1, "search", "proposal_workers", "must be at least 1"),
            (0 <= self.bandit_floor <= 1, "search", "bandit_floor", "must be in [0, 1]"),
            (self.local_model in ("small", "large"), None, "local_model", 'must be "small" or "large"'),
        ]
        for ok, section, key, msg in checks:
            if not ok:
                where = f"{section}.{key}" if section else key
                raise ProgramError(f"{where} {msg}", section, key)


# TOML location -> (field name, accepted types)
_TOP = {"budget_s": ("budget_s", (int, float)), "seed": ("seed", (int,)),
        "population": ("population", (int,)), "devices": ("devices", (list,)),
        "model": ("model", (str,)), "api_base": ("api_base", (str,)),
        "local_model": ("local_model", (str,))}
_SECTIONS: dict[str, dict[str, tuple[str, tuple[type, ...]]]] = {
    "seeds": {
        "root": ("root_seeds", (int,)), "initial": ("initial_seeds", (int,)),
        "max": ("max_seeds", (int,)), "per_round": ("seeds_per_round", (int,)),
        "accept_p": ("accept_p", (int, float)), "futility_p": ("futility_p", (int, float)),
        "epsilon_scale": ("epsilon_scale", (int, float)),
        "rescore_every": ("rescore_every", (int,)), "rescore_seeds": ("rescore_seeds", (int,)),
    },
    "cascade": {
        "stop_p": ("cascade_stop_p", (int, float)), "min_pairs": ("cascade_min_pairs", (int,)),
    },
    "stop": {
        "generations": ("generations", (int,)), "target_val_bpb": ("target_val_bpb", (int, float)),
        "max_cost_usd": ("max_cost_usd", (int, float)), "max_hours": ("max_hours", (int, float)),
    },
    "constraints": {
        "max_peak_mem_mb": ("max_peak_mem_mb", (int, float)),
        "max_val_bpb": ("max_val_bpb", (int, float)),
    },
    "search": {
        "lookahead": ("lookahead", (int,)), "proposal_workers": ("proposal_workers", (int,)),
        "bandit_floor": ("bandit_floor", (int, float)), "parent_floor": ("parent_floor", (int, float)),
        "crossover_rate": ("crossover_rate", (int, float)),
    },
}


def split_front_matter(text: str, source: str = "program.md") -> tuple[str, str, int]:
    """Returns (toml, prose, line number of the first TOML line in the file)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != FENCE:
        return "", text, 0
    for i in range(1, len(lines)):
        if lines[i].strip() == FENCE:
            return "".join(lines[1:i]), "".join(lines[i + 1:]).lstrip("\n"), 2
    raise ProgramError(f"{source}:1: front matter opened with '+++' is never closed by a '+++' line")


def _line_of(toml_text: str, first_line: int, section: str | None, key: str) -> int:
    """Best effort: the file line where `key` is set in `section`."""
    current: str | None = None
    for i, raw in enumerate(toml_text.splitlines()):
        s = raw.strip()
        m = re.match(r"^\[\s*([^\]]+?)\s*\]$", s)
        if m:
            current = m.group(1)
            continue
        if re.match(rf"^{re.escape(key)}\s*=", s) and current == section:
            return first_line + i
        if section is not None and current is None and s.startswith(f"{section}.{key}"):
            return first_line + i
    for i, raw in enumerate(toml_text.splitlines()):
        if key in raw:
            return first_line + i
    return max(first_line, 1)


def parse_program(text: str, source: str = "program.md") -> ProgramConfig:
    toml_text, prose, first = split_front_matter(text, source)
    if not toml_text.strip():
        return ProgramConfig(prose=prose)
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            line = int(m.group(1)) + first - 1
            msg = msg[: m.start()].strip() + f" (column {m.group(2)})"
        else:
            line = first
        raise ProgramError(f"{source}:{line}: invalid TOML front matter: {msg}") from None

    values: dict[str, Any] = {"prose": prose}

    def take(section: str | None, key: str, value: Any, spec: tuple[str, tuple[type, ...]]) -> None:
        name, types = spec
        where = f"{section}.{key}" if section else key
        if isinstance(value, bool) or not isinstance(value, types):
            line = _line_of(toml_text, first, section, key)
            want = " or ".join(t.__name__ for t in types)
            raise ProgramError(f"{source}:{line}: {where} must be {want}, got {value!r}")
        values[name] = tuple(str(v) for v in value) if name == "devices" else value

    for key, value in data.items():
        if key in _TOP:
            take(None, key, value, _TOP[key])
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ProgramError(f"{source}:{_line_of(toml_text, first, None, key)}: {key} must be a table [{key}]")
            for k, v in value.items():
                if k not in _SECTIONS[key]:
                    known = ", ".join(_SECTIONS[key])
                    raise ProgramError(
                        f"{source}:{_line_of(toml_text, first, key, k)}: unknown key {key}.{k} (known: {known})"
                    )
                take(key, k, v, _SECTIONS[key][k])
        elif key == "personas":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ProgramError(
                    f"{source}:{_line_of(toml_text, first, None, key)}: personas must be tables [personas.NAME]"
                )
            for name, table in value.items():
                if "model" in table and not isinstance(table["model"], str):
                    raise ProgramError(
                        f"{source}:{_line_of(toml_text, first, f'personas.{name}', 'model')}: "
                        f"personas.{name}.model must be a string"
                    )
            values["personas"] = {name: dict(t) for name, t in value.items()}
        else:
            known = ", ".join([*_TOP, *_SECTIONS, "personas"])
            raise ProgramError(
                f"{source}:{_line_of(toml_text, first, None, key)}: unknown key {key!r} (known: {known})"
            )
    cfg = ProgramConfig(**values)
    try:
        cfg.validate()
    except ProgramError as exc:
        line = _line_of(toml_text, first, exc.section, exc.key or "")
        raise ProgramError(f"{source}:{line}: {exc}") from None
    return cfg


def load_program(path: str | Path) -> ProgramConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProgramError(f"cannot read {path}: {exc.strerror}") from None
    return parse_program(text, source=str(path))
