"""The values of train.py's constants, and the constraints between them.

Flow: the mutation menu (agents.moves), the knob format (agents.proposer) and the
novelty gate (agents.novelty) need to know what a constant is worth, not how it is
written: `MODEL_DIM = 256 if ON_GPU else 128` is 128 on CPU and 256 on CUDA. `values`
evaluates the module-level UPPER_CASE constants (`agents.edits.find_knobs`) in file
order, once per device kind, with a small arithmetic evaluator (numbers, strings,
tuples, + - * / // % **, comparisons, `a if c else b`, names of earlier constants and
`ON_GPU`); a constant it cannot evaluate is left out. `violations` checks the
relations the seed model needs, each a rule with a one-line message a model can act on:

- MODEL_DIM is a positive multiple of N_HEADS (the attention reshape);
- head size MODEL_DIM // N_HEADS is positive and even (rotary embeddings rotate pairs);
- DEPTH, N_HEADS, BATCH_SIZE, SEQ_LEN, MLP_RATIO are positive integers;
- SEQ_LEN is at most the harness's context (prepare.SEQ_LEN);
- learning rates are positive; WARMUP_FRAC and WARMDOWN_FRAC are in [0, 1] with a sum
  at most 1; ADAM_BETAS are in [0, 1); GRAD_CLIP and WEIGHT_DECAY are not negative;
- OPTIMIZER is one the file handles ("muon" or "adamw").

A rule whose constants the file does not define is skipped, so a rewritten train.py is
only held to the relations it still has. It never imports or runs train.py.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any

from agents.edits import EditError, find_knobs

HARNESS_SEQ_LEN = 256  # prepare.SEQ_LEN (read from prepare.py without importing torch)
OPTIMIZERS = ("muon", "adamw")

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}


class _Unknown(Exception):
    pass


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise _Unknown(node.id)
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return +v
        if isinstance(node.op, ast.Not):
            return not v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Pow) and isinstance(b, (int, float)) and abs(b) > 64:
            raise _Unknown("power too large")
        return _BIN[type(node.op)](a, b)
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP:
        return _CMP[type(node.ops[0])](_eval(node.left, env), _eval(node.comparators[0], env))
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, env) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    raise _Unknown(type(node).__name__)


@functools.lru_cache(maxsize=256)
def _knob_sources(source: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, k.source) for name, k in find_knobs(source).items())


@functools.lru_cache(maxsize=4096)
def _expr(text: str) -> ast.Expression:
    return ast.parse(text.strip(), mode="eval")


def values(source: str, on_gpu: bool = False, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The constants' values on one device kind (those that evaluate). `overrides` maps
    a constant to a new value expression, as if the file said so (the menu checks a
    move this way without rewriting the file). Raises EditError when the file does not
    parse."""
    env: dict[str, Any] = {"ON_GPU": on_gpu}
    out: dict[str, Any] = {}
    for name, text in _knob_sources(source):
        text = (overrides or {}).get(name, text)
        try:
            v = _eval(_expr(text), env)
        except (_Unknown, SyntaxError, ArithmeticError, TypeError, ValueError, RecursionError):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        env[name] = out[name] = v
    return out


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def violations_of(vals: dict[str, Any], where: str = "") -> list[str]:
    """Broken relations between constant values (one message each)."""
    out: list[str] = []
    on = f" ({where})" if where else ""
    for name in ("DEPTH", "N_HEADS", "BATCH_SIZE", "SEQ_LEN", "MLP_RATIO", "MODEL_DIM"):
        if name in vals and not _is_pos_int(vals[name]):
            out.append(f"{name} must be a positive integer, got {vals[name]!r}{on}")
    dim, heads = vals.get("MODEL_DIM"), vals.get("N_HEADS")
    if _is_pos_int(dim) and _is_pos_int(heads):
        if dim % heads:
            out.append(f"MODEL_DIM {dim} is not a multiple of N_HEADS {heads}{on}")
        elif dim // heads % 2:
            out.append(f"head size MODEL_DIM // N_HEADS = {dim // heads} must be even for rotary embeddings{on}")
    if _is_pos_int(vals.get("SEQ_LEN")) and vals["SEQ_LEN"] > HARNESS_SEQ_LEN:
        out.append(f"SEQ_LEN {vals['SEQ_LEN']} is over the harness's context {HARNESS_SEQ_LEN}{on}")
    for name in ("LEARNING_RATE", "MUON_LR"):
        if name in vals and not (_is_num(vals[name]) and vals[name] > 0):
            out.append(f"{name} must be a positive number, got {vals[name]!r}{on}")
    for name in ("GRAD_CLIP", "WEIGHT_DECAY", "LOGIT_SOFTCAP"):
        if name in vals and not (_is_num(vals[name]) and vals[name] >= 0):
            out.append(f"{name} must not be negative, got {vals[name]!r}{on}")
    fracs = [n for n in ("WARMUP_FRAC", "WARMDOWN_FRAC") if n in vals]
    for name in fracs:
        if not (_is_num(vals[name]) and 0 <= vals[name] <= 1):
            out.append(f"{name} must be in [0, 1], got {vals[name]!r}{on}")
    if len(fracs) == 2 and all(_is_num(vals[n]) for n in fracs) and vals["WARMUP_FRAC"] + vals["WARMDOWN_FRAC"] > 1:
        out.append(f"WARMUP_FRAC + WARMDOWN_FRAC = {vals['WARMUP_FRAC'] + vals['WARMDOWN_FRAC']:g} is over 1{on}")
    betas = vals.get("ADAM_BETAS")
    if betas is not None and not (isinstance(betas, tuple) and len(betas) == 2
                                  and all(_is_num(b) and 0 <= b < 1 for b in betas)):
        out.append(f"ADAM_BETAS must be two numbers in [0, 1), got {betas!r}{on}")
    if "OPTIMIZER" in vals and vals["OPTIMIZER"] not in OPTIMIZERS:
        out.append(f"OPTIMIZER must be one of {', '.join(OPTIMIZERS)}, got {vals['OPTIMIZER']!r}{on}")
    return out


def violations(source: str, overrides: dict[str, str] | None = None) -> list[str]:
    """Broken relations on CPU and on CUDA (each message once)."""
    try:
        cpu, gpu = values(source, False, overrides), values(source, True, overrides)
    except EditError:
        return []
    out = violations_of(cpu, "on CPU")
    if gpu != cpu:
        out += violations_of(gpu, "on GPU")
    return out
