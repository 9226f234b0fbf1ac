"""The fixed rubric that judges whether a hypothesis matches its edit.

Flow: bench/proposals.py (and tests) call `judge(parent, child, hypothesis)` on every
valid proposal; the share of matches is one of the proposers' figures. The rubric, in
full (nothing else is judged, and it is the same for every proposer):

1. **What changed.** A constant changed when its value on CPU or CUDA differs
   (agents.constants; otherwise its written expression). A definition (module-level
   function or class) changed when its AST differs; a method change counts for its class.
2. **Names every change.** Each changed constant is named in the hypothesis by its own
   name (case-insensitive, ``_`` or space) or by one of its aliases in `ALIASES`
   ("learning rate" for LEARNING_RATE, "heads" for N_HEADS, ...). Each changed
   definition is named by its name or an alias of it (`CODE_ALIASES`: "activation" or
   "gelu" for MLP, ...).
3. **No stray constant.** The hypothesis does not name, by its exact UPPER_CASE name, a
   constant that did not change.
4. **Right direction.** For a changed numeric constant, direction words within three
   words of where it is named ("increase", "larger", "more", "double"... against
   "decrease", "smaller", "fewer", "halve"...) agree with the change; phrases about the
   objective ("lower val_bpb", "reduce the loss") are not read as directions. No
   direction word near it: nothing to check.

A hypothesis matches when 2, 3 and 4 hold. The rubric judges whether the words describe
the edit, not whether the idea is good or its reasoning sound.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from agents import constants
from agents.edits import EditError, find_knobs

ALIASES: dict[str, tuple[str, ...]] = {
    "DEPTH": ("depth", "layers", "layer", "blocks", "block", "deeper", "shallower"),
    "MODEL_DIM": ("model dim", "width", "dimension", "hidden size", "embedding size", "wider", "narrower",
                  "residual stream", "d_model"),
    "N_HEADS": ("heads", "head"),
    "MLP_RATIO": ("mlp ratio", "mlp width", "mlp hidden", "mlp expansion", "mlp"),
    "SEQ_LEN": ("sequence length", "seq len", "context length", "context"),
    "BATCH_SIZE": ("batch size", "batch"),
    "OPTIMIZER": ("optimizer", "optimiser", "adamw", "muon"),
    "LEARNING_RATE": ("learning rate", "lr", "adamw rate", "adam learning rate"),
    "MUON_LR": ("muon lr", "muon learning rate", "muon rate", "learning rate", "lr"),
    "WEIGHT_DECAY": ("weight decay", "decay", "regularization", "regularisation"),
    "ADAM_BETAS": ("betas", "beta", "momentum"),
    "WARMUP_FRAC": ("warmup", "warm-up", "warm up"),
    "WARMDOWN_FRAC": ("warmdown", "warm-down", "warm down", "cooldown", "decay phase", "annealing"),
    "GRAD_CLIP": ("gradient clipping", "grad clip", "clipping", "clip"),
    "ROPE_BASE": ("rope", "rotary", "positional"),
    "LOGIT_SOFTCAP": ("softcap", "soft cap", "soft-cap", "logit cap"),
    "COMPILE": ("compile", "torch.compile"),
}
CODE_ALIASES: dict[str, tuple[str, ...]] = {
    "MLP": ("mlp", "activation", "relu", "gelu", "silu", "swiglu", "feed-forward", "feedforward"),
    "Attention": ("attention", "qk", "query", "key", "value", "heads"),
    "Block": ("block", "residual", "norm", "layer"),
    "GPT": ("model", "embedding", "head", "init", "initialisation", "initialization", "tying"),
    "rms_norm": ("norm", "rmsnorm", "normalization", "normalisation"),
    "rotary": ("rotary", "rope", "positional"),
    "Muon": ("muon", "optimizer", "momentum"),
    "newton_schulz": ("newton", "schulz", "orthogonal", "muon"),
    "build_optimizers": ("optimizer", "optimiser", "adamw", "muon", "weight decay", "learning rate"),
    "lr_multiplier": ("schedule", "warmup", "warm-up", "warmdown", "decay", "learning rate"),
    "main": ("training loop", "loop", "accumulation", "clipping", "schedule"),
}
UP = ("increase", "increasing", "increased", "raise", "raising", "raised", "higher", "larger", "bigger",
      "more", "double", "doubling", "doubled", "grow", "add", "adding", "deeper", "wider", "longer", "up")
DOWN = ("decrease", "decreasing", "decreased", "reduce", "reducing", "reduced", "lower", "lowering",
        "lowered", "smaller", "fewer", "less", "halve", "halving", "halved", "shrink", "remove", "removing",
        "shallower", "narrower", "shorter", "down", "cut")
_OBJECTIVE = re.compile(
    r"\b(lower|lowers|lowering|reduce|reduces|reducing|decrease|decreases|improve|improves|better)\s+"
    r"(the\s+)?(final\s+)?(validation\s+|val\s+)?(val_bpb|bpb|loss|perplexity|error)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Judgement:
    matches: bool
    changed: tuple[str, ...]  # constants and definitions that changed
    problems: tuple[str, ...]  # why not, one line each (empty when it matches)


def _defs(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    return {n.name: ast.dump(n) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def changes(parent: str, child: str) -> tuple[dict[str, int], list[str]]:
    """(changed constants -> direction (+1 up, -1 down, 0 not numeric), changed definitions)."""
    pk, ck = find_knobs(parent), find_knobs(child)
    p_vals = (constants.values(parent, False), constants.values(parent, True))
    c_vals = (constants.values(child, False), constants.values(child, True))
    out: dict[str, int] = {}
    for name in sorted(set(pk) | set(ck)):
        a = tuple(v.get(name) for v in p_vals)
        b = tuple(v.get(name) for v in c_vals)
        written_same = name in pk and name in ck and pk[name].source.strip() == ck[name].source.strip()
        if a == b and (written_same or None not in a):
            continue
        direction = 0
        nums = [(x, y) for x, y in zip(a, b)
                if isinstance(x, (int, float)) and isinstance(y, (int, float))
                and not isinstance(x, bool) and not isinstance(y, bool)]
        if nums and all(y > x for x, y in nums if y != x) and any(y != x for x, y in nums):
            direction = 1
        elif nums and all(y < x for x, y in nums if y != x) and any(y != x for x, y in nums):
            direction = -1
        out[name] = direction
    pd, cd = _defs(parent), _defs(child)
    defs = sorted(n for n in set(pd) | set(cd) if pd.get(n) != cd.get(n))
    return out, defs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+(?:[.\-][a-z0-9_]+)*", text.lower())


def _mentions(words: list[str], phrase: str) -> list[int]:
    """Word positions where `phrase` (one or more words; ``_`` may be written as a
    space) starts."""
    forms = {tuple(_words(phrase)), tuple(_words(phrase.replace("_", " ")))}
    return sorted({i for f in forms for i in range(len(words) - len(f) + 1) if tuple(words[i:i + len(f)]) == f})


def judge(parent: str, child: str, hypothesis: str) -> Judgement:
    """Apply the rubric (module doc) to one proposal."""
    try:
        consts, defs = changes(parent, child)
    except EditError as e:
        return Judgement(False, (), (f"cannot read the files: {e}",))
    text = _OBJECTIVE.sub(" ", hypothesis or "")
    words = _words(text)
    problems: list[str] = []
    for name, direction in consts.items():
        spots: list[int] = []
        for phrase in (name, *ALIASES.get(name, ())):
            spots += _mentions(words, phrase)
        if not spots:
            problems.append(f"does not name {name}")
            continue
        if direction:
            near = {w for i in spots for w in words[max(0, i - 3): i + 4]}
            said_up, said_down = bool(near & set(UP)), bool(near & set(DOWN))
            if said_up != said_down and (1 if said_up else -1) != direction:
                problems.append(f"says {name} goes {'up' if said_up else 'down'}, the edit moves it "
                                f"{'up' if direction > 0 else 'down'}")
    for d in defs:
        phrases = (d, *CODE_ALIASES.get(d, ()))
        if not any(_mentions(words, p) for p in phrases):
            problems.append(f"does not name the change to {d}")
    try:
        known = set(find_knobs(parent)) | set(find_knobs(child))
    except EditError:
        known = set()
    for name in sorted(known - set(consts)):
        if re.search(rf"\b{re.escape(name)}\b", hypothesis or ""):
            problems.append(f"names {name}, which the edit does not change")
    return Judgement(not problems, (*consts, *defs), tuple(problems))
