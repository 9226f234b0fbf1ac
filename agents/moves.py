"""The typed mutation menu: the moves a small model (or the random baseline) picks from.

Flow: for a parent train.py, `menu` lists the moves that apply to it and keep the
constraints between constants (agents.constants): scale a numeric constant by a factor,
set a constant, swap the optimizer, add or remove a block (DEPTH +-1), change the MLP's
activation. `schema` turns the menu into the JSON schema a small model answers under
(llama.cpp compiles it into a grammar, so the reply is always one of the listed moves);
`apply` turns a chosen move into the child's source, and `describe` into the words
that open its hypothesis, which therefore always names what changed. A move that would
break a constraint is not on the menu (scale factors and head counts are filtered), nor,
given the run's programs, one whose child would repeat a known program, and `apply`
re-checks, so a `set` with a bad value is an EditError a repair round trip can
quote.

The reply format (edit format ``moves``)::

    {"move": {"op": "scale", "name": "LEARNING_RATE", "factor": 2.0},
     "reason": "a higher peak rate should converge faster within the short budget"}

It never calls a model or runs code; free-form edits (SEARCH/REPLACE, whole file) stay
with capable models (agents.edits).
"""

from __future__ import annotations

import ast
import functools
import json
import random
from dataclasses import dataclass

from agents import constants, novelty
from agents.edits import (
    EditError,
    Knob,
    _module_names,
    _render_value,
    _strip_json_fence,
    apply_knobs,
    find_knobs,
)
from agents.novelty import NoveltyIndex

SCALE_FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)
ACTIVATIONS = {  # name -> source, with {x} for the MLP's hidden pre-activation
    "relu2": "F.relu({x}).square()",
    "relu": "F.relu({x})",
    "gelu": "F.gelu({x})",
    "silu": "F.silu({x})",
}
_ACT_FUNCS = {"relu", "gelu", "silu"}


@dataclass(frozen=True)
class Move:
    """One move: `op` in scale, set, optimizer, depth, activation."""

    op: str
    name: str = ""  # the constant (scale, set)
    factor: float | None = None  # scale
    value: object = None  # set, optimizer, activation
    delta: int | None = None  # depth

    def as_json(self) -> dict:
        d: dict = {"op": self.op}
        if self.op in ("scale", "set"):
            d["name"] = self.name
        if self.op == "scale":
            d["factor"] = self.factor
        elif self.op == "depth":
            d["delta"] = self.delta
        else:
            d["value"] = self.value
        return d


@dataclass(frozen=True)
class Activation:
    """Where the MLP's activation is written in the source (one line)."""

    name: str
    lineno: int
    col: int
    end_col: int
    inner: str  # the source of its argument


def find_activation(source: str) -> Activation | None:
    """The activation call in the `forward` of a class named like *MLP*, if it is one of
    ACTIVATIONS written on one line."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for cls in tree.body:
        if not (isinstance(cls, ast.ClassDef) and "mlp" in cls.name.lower()):
            continue
        for fn in cls.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name == "forward"):
                continue
            for node in ast.walk(fn):
                found = _activation_of(node)
                if found is None or node.lineno != node.end_lineno:
                    continue
                name, arg = found
                line = lines[node.lineno - 1]
                col = len(line.encode()[: node.col_offset].decode(errors="replace"))
                end = len(line.encode()[: node.end_col_offset].decode(errors="replace"))
                return Activation(name, node.lineno, col, end, ast.get_source_segment(source, arg) or "")
    return None


def _activation_of(node: ast.AST) -> tuple[str, ast.expr] | None:
    # F.relu(x).square()
    if (isinstance(node, ast.Call) and not node.args and isinstance(node.func, ast.Attribute)
            and node.func.attr == "square" and isinstance(node.func.value, ast.Call)):
        inner = _activation_of(node.func.value)
        if inner is not None and inner[0] == "relu":
            return "relu2", inner[1]
        return None
    if (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords
            and isinstance(node.func, ast.Attribute) and node.func.attr in _ACT_FUNCS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "F"):
        return node.func.attr, node.args[0]
    return None


def _scalable(k: Knob) -> bool:
    """A numeric literal, or `a if cond else b` with numeric literal branches."""
    try:
        node = ast.parse(k.source.strip(), mode="eval").body
    except SyntaxError:
        return False

    def num(n: ast.AST) -> bool:
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            n = n.operand
        return isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)

    return num(node) or (isinstance(node, ast.IfExp) and num(node.body) and num(node.orelse))


def _fmt_num(v: float, as_int: bool) -> str:
    if as_int:
        return str(round(v))
    return repr(float(f"{v:.6g}"))


def scaled_source(k: Knob, factor: float) -> str:
    """The knob's value expression with each numeric branch multiplied by `factor`
    (integers stay integers, rounded)."""
    node = ast.parse(k.source.strip(), mode="eval").body

    def scale(n: ast.AST) -> str:
        neg = isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub)
        c = n.operand if neg else n  # type: ignore[attr-defined]
        v = -c.value if neg else c.value  # type: ignore[attr-defined]
        return _fmt_num(v * factor, isinstance(v, int))

    if isinstance(node, ast.IfExp):
        test = ast.get_source_segment(k.source.strip(), node.test)
        return f"{scale(node.body)} if {test} else {scale(node.orelse)}"
    return scale(node)


def apply(source: str, move: Move) -> str:
    """The child's source after `move`; EditError when the move does not apply or breaks
    a constraint (the message says which)."""
    knobs = find_knobs(source)
    if move.op in ("scale", "set") and move.name not in knobs:
        raise EditError(f"{move.name or '(no name)'} is not a constant of train.py")
    if move.op == "scale":
        k = knobs[move.name]
        if not _scalable(k) or not isinstance(move.factor, (int, float)) or move.factor <= 0:
            raise EditError(f"{move.name} cannot be scaled by {move.factor!r}")
        child = _replace_value(source, k, scaled_source(k, float(move.factor)))
    elif move.op == "set":
        child = apply_knobs(source, {move.name: move.value}, knobs)
    elif move.op == "optimizer":
        if "OPTIMIZER" not in knobs:
            raise EditError("train.py has no OPTIMIZER constant")
        child = apply_knobs(source, {"OPTIMIZER": move.value}, knobs)
    elif move.op == "depth":
        if "DEPTH" not in knobs or move.delta not in (-1, 1):
            raise EditError("a depth move needs a DEPTH constant and a delta of +1 or -1")
        child = _replace_value(source, knobs["DEPTH"], scaled_by_delta(knobs["DEPTH"], move.delta))
    elif move.op == "activation":
        act = find_activation(source)
        if act is None or move.value not in ACTIVATIONS:
            raise EditError(f"the activation cannot be changed to {move.value!r} in this train.py")
        if act.name == move.value:
            raise EditError(f"the MLP already uses {move.value}")
        lines = source.splitlines(keepends=True)
        line = lines[act.lineno - 1]
        tail = line[act.end_col:].split("  #", 1)[0].rstrip("\n")  # its comment named the old one
        lines[act.lineno - 1] = line[: act.col] + ACTIVATIONS[str(move.value)].format(x=act.inner) + tail + "\n"
        child = "".join(lines)
    else:
        raise EditError(f"unknown move {move.op!r}; moves: scale, set, optimizer, depth, activation")
    if child == source or constants.values(child) == constants.values(source) and _same_code(child, source):
        raise EditError(f"the move {json.dumps(move.as_json())} changes nothing")
    broken = constants.violations(child)
    if broken:
        raise EditError("the move breaks a constraint: " + "; ".join(broken[:3]))
    return child


def _same_code(a: str, b: str) -> bool:
    return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))


def scaled_by_delta(k: Knob, delta: int) -> str:
    node = ast.parse(k.source.strip(), mode="eval").body
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return str(node.value + delta)
    if isinstance(node, ast.IfExp) and all(isinstance(b, ast.Constant) and isinstance(b.value, int)
                                           for b in (node.body, node.orelse)):
        test = ast.get_source_segment(k.source.strip(), node.test)
        return f"{node.body.value + delta} if {test} else {node.orelse.value + delta}"  # type: ignore[attr-defined]
    raise EditError(f"DEPTH = {k.source} is not an integer literal")


def _replace_value(source: str, k: Knob, new: str) -> str:
    lines = source.splitlines(keepends=True)
    first, last = lines[k.lineno - 1], lines[k.end_lineno - 1]
    lines[k.lineno - 1 : k.end_lineno] = [first[: k.col] + new + last[k.end_col:]]
    return "".join(lines)


def menu(source: str, known: NoveltyIndex | None = None) -> list[Move]:
    """Every move of the closed part of the menu that applies to `source` and keeps the
    constraints (scale, optimizer, depth, activation); `set` moves are open-valued and
    listed by `schema` instead. With `known` (the run's programs, agents.novelty), a move
    whose child would repeat one of them is left out: a model answering under the schema
    cannot pick it (small models otherwise re-propose a refused repeat)."""
    out = list(_menu(source))
    if known is None or not len(known):
        return out
    fresh = []
    for m in out:
        try:
            if novelty.check(_applied(source, m), known) is None:
                fresh.append(m)
        except EditError:
            continue
    return fresh


@functools.lru_cache(maxsize=512)
def _applied(source: str, move: Move) -> str:
    """`apply`, remembered: the menu of one parent is filtered again for every prompt."""
    return apply(source, move)


@functools.lru_cache(maxsize=64)
def _menu(source: str) -> tuple[Move, ...]:
    knobs = find_knobs(source)
    out: list[Move] = []
    now = (constants.values(source, False), constants.values(source, True))

    def ok(m: Move) -> bool:
        """The move applies, changes a value and keeps the constraints (checked on the
        constants' values, without rewriting the file)."""
        try:
            if m.op == "scale":
                new = {m.name: scaled_source(knobs[m.name], float(m.factor or 0))}
            elif m.op == "depth":
                new = {"DEPTH": scaled_by_delta(knobs["DEPTH"], m.delta or 0)}
            elif m.op == "optimizer":
                new = {"OPTIMIZER": repr(m.value)}
            else:
                apply(source, m)
                return True
        except EditError:
            return False
        after = (constants.values(source, False, new), constants.values(source, True, new))
        return after != now and not constants.violations(source, new)

    for k in knobs.values():
        if k.kind in ("int", "float", "expr") and _scalable(k) and k.name not in ("DEPTH",):
            out += [m for f in SCALE_FACTORS if ok(m := Move("scale", k.name, factor=f))]
    if "OPTIMIZER" in knobs:
        current = constants.values(source).get("OPTIMIZER")
        out += [m for o in constants.OPTIMIZERS if o != current and ok(m := Move("optimizer", value=o))]
    if "DEPTH" in knobs:
        out += [m for d in (1, -1) if ok(m := Move("depth", delta=d))]
    act = find_activation(source)
    if act is not None:
        out += [m for a in ACTIVATIONS if a != act.name and ok(m := Move("activation", value=a))]
    return tuple(out)


_SET_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
              "str": {"type": "string", "maxLength": 40}}


def schema(source: str, known: NoveltyIndex | None = None) -> dict:
    """The JSON schema of a reply: one move of `menu(source, known)` (or a typed `set`)
    and a reason. Enumerations carry only the values that keep the constraints (and, with
    `known`, do not repeat a known program)."""
    moves = menu(source, known)
    alts: list[dict] = []
    by_name: dict[str, list[float]] = {}
    for m in moves:
        if m.op == "scale":
            by_name.setdefault(m.name, []).append(float(m.factor or 0))
    for name, factors in by_name.items():
        alts.append(_obj({"op": {"const": "scale"}, "name": {"const": name}, "factor": {"enum": factors}}))
    for op, key in (("optimizer", "value"), ("activation", "value"), ("depth", "delta")):
        vals = [getattr(m, key) for m in moves if m.op == op]
        if vals:
            alts.append(_obj({"op": {"const": op}, key: {"enum": vals}}))
    for k in find_knobs(source).values():
        if k.kind in _SET_TYPES and k.name != "OPTIMIZER":
            alts.append(_obj({"op": {"const": "set"}, "name": {"const": k.name}, "value": dict(_SET_TYPES[k.kind])}))
    return {
        "type": "object",
        "properties": {
            "move": {"anyOf": alts},
            "reason": {"type": "string", "minLength": 10, "maxLength": 200},
        },
        "required": ["move", "reason"],
        "additionalProperties": False,
    }


def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def render_menu(source: str, known: NoveltyIndex | None = None) -> str:
    """The menu as prompt text: one line per kind of move, with its allowed values (as `schema`)."""
    moves = menu(source, known)
    knobs = find_knobs(source)
    vals = constants.values(source)
    lines = []
    by_name: dict[str, list[str]] = {}
    for m in moves:
        if m.op == "scale":
            by_name.setdefault(m.name, []).append(f"{m.factor:g}")
    for name, fs in by_name.items():
        note = f"  # {knobs[name].comment}" if knobs[name].comment else ""
        lines.append(f'- {{"op": "scale", "name": "{name}", "factor": one of {", ".join(fs)}}}'
                     f"   now {knobs[name].source}{note}")
    for op, key in (("optimizer", "value"), ("activation", "value"), ("depth", "delta")):
        vs = [json.dumps(getattr(m, key)) for m in moves if m.op == op]
        if vs:
            now = {"optimizer": json.dumps(vals.get("OPTIMIZER")), "depth": str(vals.get("DEPTH")),
                   "activation": json.dumps(getattr(find_activation(source), "name", None))}[op]
            lines.append(f'- {{"op": "{op}", "{key}": one of {", ".join(vs)}}}   now {now}')
    settable = [k.name for k in knobs.values() if k.kind in _SET_TYPES and k.name != "OPTIMIZER"]
    if settable:
        lines.append(f'- {{"op": "set", "name": NAME, "value": v}} for NAME in {", ".join(settable)}')
    lines.append("Constraints (moves that break them are refused): MODEL_DIM a multiple of N_HEADS with an "
                 f"even head size; SEQ_LEN at most {constants.HARNESS_SEQ_LEN}; WARMUP_FRAC + WARMDOWN_FRAC <= 1; "
                 "sizes are positive integers.")
    return "\n".join(lines)


def parse_reply(reply: str) -> tuple[Move, str]:
    """(move, reason) from a JSON reply. Raises EditError naming what is wrong."""
    text = _strip_json_fence(reply or "")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise EditError(f"reply is not valid JSON: {getattr(e, 'msg', type(e).__name__)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("move"), dict):
        raise EditError('reply JSON needs a "move" object and a "reason"')
    reason = data.get("reason", "")
    reason = " ".join(str(reason).split())[:300] if reason else ""
    m = data["move"]
    op = m.get("op")
    if not isinstance(op, str):
        raise EditError('the move needs an "op"', hypothesis=reason)
    name = m.get("name", "")
    factor, delta = m.get("factor"), m.get("delta")
    if op == "scale" and (not isinstance(factor, (int, float)) or isinstance(factor, bool)):
        raise EditError("a scale move needs a numeric factor", hypothesis=reason)
    if op == "depth" and (not isinstance(delta, int) or isinstance(delta, bool)):
        raise EditError("a depth move needs an integer delta", hypothesis=reason)
    return Move(op, str(name or ""), float(factor) if op == "scale" else None, m.get("value"),
                delta if op == "depth" else None), reason


def describe(source: str, move: Move) -> str:
    """The opening words of the hypothesis: the move and the values it changes."""
    before = find_knobs(source)
    if move.op == "scale":
        new = scaled_source(before[move.name], float(move.factor or 0))
        return f"scale {move.name} by {move.factor:g} ({before[move.name].source} -> {new})"
    if move.op == "set":
        names = _module_names(source)
        return f"set {move.name} {before[move.name].source} -> {_render_value(before[move.name], move.value, names)}"
    if move.op == "optimizer":
        return f"swap the optimizer: OPTIMIZER {before['OPTIMIZER'].source} -> {move.value!r}"
    if move.op == "depth":
        what = "add a block" if (move.delta or 0) > 0 else "remove a block"
        return f"{what}: DEPTH {before['DEPTH'].source} -> {scaled_by_delta(before['DEPTH'], move.delta or 0)}"
    act = find_activation(source)
    return f"change the MLP activation {act.name if act else '?'} -> {move.value}"


def random_move(source: str, rng: random.Random) -> Move:
    """A random move of the closed menu (the random-mutation baseline): a uniform choice
    of what to change (a constant to scale, the optimizer, the depth, the activation),
    then of how."""
    groups: dict[tuple[str, str], list[Move]] = {}
    for m in menu(source):
        groups.setdefault((m.op, m.name), []).append(m)
    if not groups:
        raise EditError("no move of the menu applies to this train.py")
    return rng.choice(groups[rng.choice(sorted(groups))])
