"""Personas: who proposes what, with which model and which edit format.

The population loop picks a persona and a parent; the persona's `brief` goes into the
prompt (agents.prompts), its `model` and `edit_format` drive the call
(agents.proposer), and `prefers` tells the loop's selection which parents suit it.
This module only holds the definitions and reads the user's overrides; it does not
select parents, build prompts or call models.

Built-in personas: ``architect`` (model structure), ``optimizer-tuner`` (optimizer,
schedules, batch size, learning rates), ``bug-hunter`` (repairs crashed candidates from
their traceback; audits the best one for bugs such as a causality leak or a bad
initialisation), and ``random`` (off by default; no LLM: a random move of the typed
menu, agents.moves, the baseline every LLM persona should beat; turn it on beside the
others with ``[personas.random] enabled = true``; a top-level ``model = "random"`` (or
``--model random``) makes every persona propose random moves, a whole run without an LLM).

Users add or change personas in program.md's TOML front matter; the population parses
the TOML and hands the resulting dict to `load_personas`::

    model = "anthropic/claude-sonnet-4-5"      # default model for every persona (optional)
    api_base = "http://127.0.0.1:11434"        # default api_base (optional)

    [personas.architect]
    model = "openai/gpt-4o"                    # litellm model name
    edit_format = "search_replace"             # "search_replace" | "whole_file" | "knobs"
    brief = "Try attention variants."          # replaces the built-in brief

    [personas.data-nerd]                       # a new persona
    brief = "Change how batches are formed."
    touches = "TrainLoader arguments, SEQ_LEN, BATCH_SIZE"
    prefers = "best"

Keys of a persona table (all optional for a built-in persona; ``brief`` is required
for a new one):

- ``model`` (str): litellm model name; default: the top-level ``model``, else the
  embedded local model (see agents.local_model).
- ``api_base`` (str), ``api_key_env`` (str: the environment variable holding the key,
  for providers litellm does not know).
- ``brief`` (str): the persona's instructions; ``touches`` (str): what it should edit.
- ``prefers`` (str): parent preference, one of ``best`` (lowest val_bpb), ``frontier``
  (any Pareto member, spread over the front), ``failed`` (a recently crashed or refused
  candidate to repair, else the best to audit).
- ``edit_format`` (str): ``search_replace``, ``whole_file``, ``knobs`` (set constants
  by name) or ``moves`` (one move of the typed menu of agents.moves); a persona on the
  embedded model uses ``moves`` unless it sets ``knobs``.
- ``temperature`` (float), ``max_tokens`` (int: reply budget), ``context_window`` (int:
  prompt + reply tokens; default from litellm's model info, else 8192),
  ``timeout_s`` (float), ``weight`` (float: how often the loop picks it, relative to
  the others: the bandit's draws and its uniform exploration are both weighted by it),
  ``enabled`` (bool), ``crossover`` (bool: may merge two archive members).

An unknown key or a bad value raises `PersonaConfigError` with one line naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

from arena.errors import EvolveError

log = logging.getLogger(__name__)

EDIT_FORMATS = ("search_replace", "whole_file", "knobs", "moves")
RANDOM_MODEL = "random"  # a persona with this model proposes random moves, no LLM
PARENT_PREFERENCES = ("best", "frontier", "failed")


class PersonaConfigError(EvolveError, ValueError):
    """program.md's persona settings are invalid; the message names the key."""


@dataclass(frozen=True)
class Persona:
    name: str
    brief: str
    touches: str
    prefers: str = "best"
    edit_format: str = "search_replace"
    model: str | None = None  # None: the embedded local model
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.7
    max_tokens: int = 2048
    context_window: int | None = None
    timeout_s: float = 180.0
    weight: float = 1.0
    enabled: bool = True
    crossover: bool = False


ARCHITECT = Persona(
    name="architect",
    brief=(
        "You are the architect. You change the structure of the model: depth and width, "
        "attention (heads, positional encoding, normalisation, QK-norm), the MLP "
        "(activation, ratio), residual scaling, embeddings and the output head, weight "
        "tying and initialisation. Prefer one structural idea per proposal whose effect "
        "you can predict, and keep the model trainable within the same time budget."
    ),
    touches="the Model section (classes Attention, MLP, Block, GPT) and the size constants "
    "(DEPTH, MODEL_DIM, N_HEADS, MLP_RATIO, ROPE_BASE, LOGIT_SOFTCAP)",
    prefers="frontier",
    edit_format="search_replace",
    temperature=0.8,
    crossover=True,
)

OPTIMIZER_TUNER = Persona(
    name="optimizer-tuner",
    brief=(
        "You are the optimizer tuner. You change how the model is trained, not what it "
        "is: the optimizer and its hyperparameters, learning rates and their schedule "
        "(warm-up, warm-down), weight decay, gradient clipping, batch size and sequence "
        "length. Under a fixed time budget, throughput matters as much as sample "
        "efficiency. Change one thing, or a few tightly coupled things, at a time."
    ),
    touches="the hyperparameter constants (LEARNING_RATE, MUON_LR, WEIGHT_DECAY, ADAM_BETAS, "
    "WARMUP_FRAC, WARMDOWN_FRAC, GRAD_CLIP, BATCH_SIZE, SEQ_LEN, OPTIMIZER), "
    "build_optimizers, lr_multiplier and the Muon optimizer",
    prefers="best",
    edit_format="search_replace",
    temperature=0.7,
)

BUG_HUNTER = Persona(
    name="bug-hunter",
    brief=(
        "You are the bug hunter. When given a candidate that crashed or broke the "
        "contract, read its traceback and repair the cause with the smallest change that "
        "keeps its idea. Otherwise audit the parent for bugs: information leaking from "
        "future tokens (the causality probe rejects it), wrong initialisation, wrong "
        "learning-rate schedule, dtype or device mistakes, wasted compute. Fix one bug "
        "and say which one."
    ),
    touches="anything in train.py that is wrong; keep build_model, the __main__ guard and "
    "the harness calls (prepare.*) intact",
    prefers="failed",
    edit_format="search_replace",
    temperature=0.3,
)

RANDOM = Persona(
    name="random",
    brief="No LLM: a uniformly random move of the typed menu (the baseline).",
    touches="the constants, the depth, the optimizer and the MLP activation (agents.moves)",
    prefers="best",
    edit_format="moves",
    model=RANDOM_MODEL,
    temperature=0.0,
    enabled=False,
)

DEFAULT_PERSONAS: dict[str, Persona] = {p.name: p for p in (ARCHITECT, OPTIMIZER_TUNER, BUG_HUNTER, RANDOM)}

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "brief": (str,),
    "touches": (str,),
    "prefers": (str,),
    "edit_format": (str,),
    "model": (str,),
    "api_base": (str,),
    "api_key_env": (str,),
    "temperature": (int, float),
    "max_tokens": (int,),
    "context_window": (int,),
    "timeout_s": (int, float),
    "weight": (int, float),
    "enabled": (bool,),
    "crossover": (bool,),
}
assert set(_FIELD_TYPES) == {f.name for f in fields(Persona)} - {"name"}


def _check_value(persona: str, key: str, value: object) -> object:
    where = f"personas.{persona}.{key}"
    if key not in _FIELD_TYPES:
        known = ", ".join(sorted(_FIELD_TYPES))
        raise PersonaConfigError(f"unknown key {where}; known keys: {known}")
    types = _FIELD_TYPES[key]
    if isinstance(value, bool) and bool not in types:
        raise PersonaConfigError(f"{where} must be {types[0].__name__}, got a boolean")
    if not isinstance(value, types):
        raise PersonaConfigError(f"{where} must be {types[0].__name__}, got {type(value).__name__}")
    if key == "edit_format" and value not in EDIT_FORMATS:
        raise PersonaConfigError(f"{where} must be one of {', '.join(EDIT_FORMATS)}, got {value!r}")
    if key == "prefers" and value not in PARENT_PREFERENCES:
        raise PersonaConfigError(f"{where} must be one of {', '.join(PARENT_PREFERENCES)}, got {value!r}")
    if key in ("max_tokens", "context_window", "timeout_s") and value <= 0:  # type: ignore[operator]
        raise PersonaConfigError(f"{where} must be positive, got {value}")
    if key in ("temperature", "weight") and value < 0:  # type: ignore[operator]
        raise PersonaConfigError(f"{where} must not be negative, got {value}")
    if key in ("brief", "model") and not str(value).strip():
        raise PersonaConfigError(f"{where} must not be empty")
    return float(value) if key in ("temperature", "timeout_s", "weight") else value


def load_personas(config: dict | None = None) -> dict[str, Persona]:
    """The built-in personas with program.md's overrides applied (see module doc).

    `config` is the parsed front matter (or just its ``personas`` part wrapped as
    ``{"personas": {...}}``); other top-level keys than ``model``, ``api_base`` and
    ``personas`` are ignored, as they belong to other parts of program.md. Disabled
    personas are left out."""
    config = config or {}
    if not isinstance(config, dict):
        raise PersonaConfigError(f"persona settings must be a table, got {type(config).__name__}")
    default_model = config.get("model")
    default_base = config.get("api_base")
    for key, val in (("model", default_model), ("api_base", default_base)):
        if val is not None and (not isinstance(val, str) or not val.strip()):
            raise PersonaConfigError(f"top-level {key} must be a non-empty string")
    table = config.get("personas")
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise PersonaConfigError(f"personas must be a table, got {type(table).__name__}")
    personas = dict(DEFAULT_PERSONAS)
    if default_model or default_base:
        personas = {
            n: replace(p, model=p.model or default_model, api_base=p.api_base or default_base)
            for n, p in personas.items()
        }
    for name, overrides in table.items():
        if not isinstance(name, str) or not name.strip():
            raise PersonaConfigError(f"persona name must be a non-empty string, got {name!r}")
        if not isinstance(overrides, dict):
            raise PersonaConfigError(f"personas.{name} must be a table, got {type(overrides).__name__}")
        checked = {k: _check_value(name, k, v) for k, v in overrides.items()}
        if name in personas:
            personas[name] = replace(personas[name], **checked)
        else:
            if "brief" not in checked:
                raise PersonaConfigError(f"new persona personas.{name} needs a brief")
            checked.setdefault("touches", "whatever its brief asks for")
            checked.setdefault("model", default_model)
            checked.setdefault("api_base", default_base)
            personas[name] = Persona(name=name, **checked)  # type: ignore[arg-type]
    enabled = {n: p for n, p in personas.items() if p.enabled and p.weight > 0}
    if not enabled:
        raise PersonaConfigError("every persona is disabled; enable at least one in program.md")
    return enabled


def with_model(personas: dict[str, Persona], model: str, api_base: str | None, context_window: int | None) -> dict[str, Persona]:
    """Fill in `model` for personas that have none (the embedded model): they switch to
    the move menu (agents.moves), unless they chose the knob format: free-form edits are
    beyond a 0.5B-1.5B model."""
    out = {}
    for n, p in personas.items():
        if p.model is None:
            p = replace(
                p,
                model=model,
                api_base=api_base,
                edit_format="knobs" if p.edit_format == "knobs" else "moves",
                context_window=p.context_window or context_window,
                max_tokens=min(p.max_tokens, 256),
                timeout_s=max(p.timeout_s, 600.0),  # CPU inference on a shared machine is slow
            )
        out[n] = p
    return out
