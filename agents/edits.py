"""Edit formats: turning an LLM's reply into a new train.py, and validating it.

Sits between the model's reply and the `Proposal` (agents.proposer calls it). Three
formats:

- `search_replace`: aider-style blocks, optionally preceded by the file name
  (``train.py``)::

      <<<<<<< SEARCH
      LEARNING_RATE = 3e-3
      =======
      LEARNING_RATE = 2e-3
      >>>>>>> REPLACE

  A SEARCH text is found exactly, else line by line ignoring indentation and trailing
  whitespace (the replacement is re-indented by the difference); it must match exactly
  once. A block that does not match raises `EditError` naming the block (its number
  and first line), so one repair round trip can quote it back to the model.
- `whole_file`: the whole new train.py in one fenced ```python block (fallback).
- `knobs`: JSON ``{"hypothesis": "...", "changes": [{"name": "NAME", "value": v}, ...]}``
  (or ``"changes": {"NAME": v, ...}``) setting at most 3 module-level UPPER_CASE constants of train.py, found with `ast` and replaced at the
  exact source span of their value expression (for small models; `knob_schema` gives
  the JSON schema sent as `response_format`).

Every result passes `validate_train_py`: it compiles, still defines `build_model` and
the `if __name__ == "__main__":` guard at module level, and is not a no-op (same AST as
the parent). Nothing here calls an LLM, touches git or runs code from the reply.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from dataclasses import dataclass

MAX_REPLY_CHARS = 200_000  # longer replies are refused before parsing
MAX_FILE_CHARS = 150_000  # a new train.py larger than this is refused
MAX_KNOB_CHANGES = 3  # constants one knob proposal may set (one hypothesis, not a new config)
TARGET_FILE = "train.py"


class EditError(ValueError):
    """A reply could not be turned into a valid train.py; the message is one line that
    can be shown to the model and stored as the `invalid_edit` reason."""

    def __init__(self, message: str, unmatched_block: int | None = None, hypothesis: str = "",
                 no_blocks: bool = False) -> None:
        super().__init__(message)
        self.unmatched_block = unmatched_block  # 1-based: the block that matched nowhere or several places
        self.hypothesis = hypothesis  # what the reply said it tried, when that much parsed
        self.no_blocks = no_blocks  # the reply holds no SEARCH/REPLACE block at all


# ---------------------------------------------------------------------------
# Hypothesis line

_HYP_RE = re.compile(r"^\s*(?:\*\*)?hypothesis(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def extract_hypothesis(reply: str) -> str:
    """The text after ``HYPOTHESIS:`` (first such line), stripped; '' when absent."""
    m = _HYP_RE.search(reply)
    return m.group(1).strip()[:500] if m else ""


def _check_reply_size(reply: str) -> None:
    if not isinstance(reply, str):
        raise EditError(f"reply is {type(reply).__name__}, not text")
    if not reply.strip():
        raise EditError("reply is empty")
    if len(reply) > MAX_REPLY_CHARS:
        raise EditError(f"reply is {len(reply)} characters, over the {MAX_REPLY_CHARS} limit")


# ---------------------------------------------------------------------------
# SEARCH/REPLACE


@dataclass(frozen=True)
class SearchReplaceBlock:
    index: int  # 1-based position in the reply
    search: str
    replace: str
    filename: str | None  # the path line before the block, if any

    def label(self) -> str:
        first = next((ln.strip() for ln in self.search.splitlines() if ln.strip()), "")
        return f"block {self.index} (SEARCH starting {first[:60]!r})"


_SEARCH_START = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE_END = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*```")
_PATHLIKE = re.compile(r"^[\w./\\-]+\.[A-Za-z0-9]+$")


def parse_search_replace(reply: str) -> list[SearchReplaceBlock]:
    """Parse every SEARCH/REPLACE block. Raises EditError on none or a truncated block."""
    _check_reply_size(reply)
    lines = reply.splitlines()
    blocks: list[SearchReplaceBlock] = []
    i = 0
    while i < len(lines):
        if not _SEARCH_START.match(lines[i]):
            i += 1
            continue
        filename = None
        j = i - 1
        while j >= 0 and (not lines[j].strip() or _FENCE.match(lines[j])):
            j -= 1
        if j >= 0:
            cand = lines[j].strip().strip("`*:").strip()
            if _PATHLIKE.match(cand):
                filename = cand
        n = len(blocks) + 1
        k = i + 1
        search: list[str] = []
        while k < len(lines) and not _DIVIDER.match(lines[k]):
            if _SEARCH_START.match(lines[k]) or _REPLACE_END.match(lines[k]):
                raise EditError(f"block {n} is malformed: no ======= line after <<<<<<< SEARCH")
            search.append(lines[k])
            k += 1
        if k >= len(lines):
            raise EditError(f"block {n} is truncated: no ======= line after <<<<<<< SEARCH")
        k += 1
        replace: list[str] = []
        while k < len(lines) and not _REPLACE_END.match(lines[k]):
            if _SEARCH_START.match(lines[k]) or _DIVIDER.match(lines[k]):
                raise EditError(f"block {n} is malformed: no >>>>>>> REPLACE line")
            replace.append(lines[k])
            k += 1
        if k >= len(lines):
            raise EditError(f"block {n} is truncated: no >>>>>>> REPLACE line")
        blocks.append(SearchReplaceBlock(n, "\n".join(search), "\n".join(replace), filename))
        i = k + 1
    if not blocks:
        raise EditError("reply has no <<<<<<< SEARCH / ======= / >>>>>>> REPLACE block", no_blocks=True)
    return blocks


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _apply_one(source: str, block: SearchReplaceBlock) -> str:
    if not block.search.strip():
        raise EditError(f"{block.label()} has an empty SEARCH part")
    # 1. exact
    count = source.count(block.search)
    if count == 1:
        return source.replace(block.search, block.replace, 1)
    if count > 1:
        raise EditError(
            f"{block.label()} matches {count} places in {TARGET_FILE}; include more lines to make it unique",
            block.index,
        )
    # 2. line by line, ignoring indentation and trailing whitespace
    src_lines = source.split("\n")
    pat = block.search.split("\n")
    while pat and not pat[0].strip():
        pat.pop(0)
    while pat and not pat[-1].strip():
        pat.pop()
    norm = [ln.strip() for ln in pat]
    src_norm = [ln.strip() for ln in src_lines]
    hits = [
        s for s in range(len(src_lines) - len(norm) + 1) if src_norm[s : s + len(norm)] == norm
    ]
    if not hits:
        raise EditError(f"{block.label()} does not match any lines of {TARGET_FILE}", block.index)
    if len(hits) > 1:
        raise EditError(
            f"{block.label()} matches {len(hits)} places in {TARGET_FILE}; include more lines to make it unique",
            block.index,
        )
    start = hits[0]
    first_pat = next(ln for ln in pat if ln.strip())
    first_src = src_lines[start + pat.index(first_pat)]
    have, want = _leading_ws(first_pat), _leading_ws(first_src)
    new_lines = []
    for ln in block.replace.split("\n"):
        if ln.strip() and ln.startswith(have):
            ln = want + ln[len(have) :]
        elif ln.strip() and not have:
            ln = want + ln
        new_lines.append(ln)
    return "\n".join(src_lines[:start] + new_lines + src_lines[start + len(norm) :])


def apply_search_replace(source: str, blocks: list[SearchReplaceBlock]) -> str:
    """Apply blocks in order; raises EditError naming the first block that fails."""
    for b in blocks:
        if b.filename and b.filename.replace("\\", "/").removeprefix("./") != TARGET_FILE:
            raise EditError(f"{b.label()} edits {b.filename}; only {TARGET_FILE} may be edited")
    for b in blocks:
        source = _apply_one(source, b)
    return source


# ---------------------------------------------------------------------------
# Whole file

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL)


def parse_whole_file(reply: str) -> str:
    """The largest fenced code block of the reply, as the new train.py."""
    _check_reply_size(reply)
    blocks = _CODE_BLOCK.findall(reply)
    if not blocks:
        raise EditError("reply has no fenced ```python code block with the whole train.py")
    code = max(blocks, key=len)
    return code if code.endswith("\n") else code + "\n"


# ---------------------------------------------------------------------------
# Knobs: module-level UPPER_CASE constants

_KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ALLOWED_VALUE_NODES = (
    ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare,
    ast.BoolOp, ast.Tuple, ast.List, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)  # fmt: skip


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "int", "float", "bool", "str", "tuple", "expr"
    source: str  # the current value expression, as written
    lineno: int  # 1-based line of the value's start
    col: int  # 0-based column (in characters) of the value's start
    end_lineno: int
    end_col: int
    comment: str  # the trailing comment of the line, if any


def _value_kind(node: ast.expr) -> str:
    if isinstance(node, ast.IfExp):
        a, b = _value_kind(node.body), _value_kind(node.orelse)
        return a if a == b else "expr"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _value_kind(node.operand)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int):
            return "int"
        if isinstance(v, float):
            return "float"
        if isinstance(v, str):
            return "str"
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return "tuple"
    return "expr"


def _safe_value(node: ast.AST) -> bool:
    return all(isinstance(n, _ALLOWED_VALUE_NODES) for n in ast.walk(node))


def find_knobs(source: str) -> dict[str, Knob]:
    """Module-level ``NAME = <value>`` assignments with an UPPER_CASE name and a value
    made of literals, names and operators (no calls): the constants a knob edit may
    set. Raises EditError when the source does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise EditError(f"{TARGET_FILE} does not parse: {e.msg} (line {e.lineno})") from None
    lines = source.splitlines()
    knobs: dict[str, Knob] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or not _KNOB_NAME.match(target.id):
            continue
        if not _safe_value(value) or value.end_lineno is None or value.end_col_offset is None:
            continue
        first = lines[value.lineno - 1]
        last = lines[value.end_lineno - 1]
        # ast columns are UTF-8 byte offsets; convert to character offsets
        col = len(first.encode()[: value.col_offset].decode(errors="replace"))
        end_col = len(last.encode()[: value.end_col_offset].decode(errors="replace"))
        tail = last[end_col:]
        comment = tail.split("#", 1)[1].strip() if "#" in tail else ""
        if value.lineno == value.end_lineno:
            segment = first[col:end_col]
        else:
            segment = "\n".join([first[col:], *lines[value.lineno : value.end_lineno - 1], last[:end_col]])
        knobs[target.id] = Knob(
            name=target.id,
            kind=_value_kind(value),
            source=segment,
            lineno=value.lineno,
            col=col,
            end_lineno=value.end_lineno,
            end_col=end_col,
            comment=comment,
        )
    return knobs


_JSON_TYPES = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
    "tuple": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 8},
    "expr": {"type": ["number", "string"]},
}


def knob_schema(knobs: dict[str, Knob], max_changes: int = MAX_KNOB_CHANGES) -> dict:
    """JSON schema of a knob reply: a hypothesis and a list of 1..max_changes
    ``{"name": CONSTANT, "value": ...}`` items, each value typed like the constant.
    (A list rather than an object: grammar-constrained decoders enforce `maxItems`,
    and a small model picks names freely instead of walking the properties in order.)"""
    items = [
        {
            "type": "object",
            "properties": {"name": {"const": k.name}, "value": dict(_JSON_TYPES[k.kind])},
            "required": ["name", "value"],
            "additionalProperties": False,
        }
        for k in knobs.values()
    ]
    return {
        "type": "object",
        "properties": {
            "hypothesis": {"type": "string", "minLength": 10, "maxLength": 240},
            "changes": {"type": "array", "items": {"anyOf": items}, "minItems": 1, "maxItems": max_changes},
        },
        "required": ["hypothesis", "changes"],
        "additionalProperties": False,
    }


def _strip_json_fence(reply: str) -> str:
    s = reply.strip()
    m = re.search(r"```(?:json)?\s*\n(.*?)\n\s*```", s, re.DOTALL)
    if m:
        return m.group(1)
    if not s.startswith("{") and "{" in s and s.rstrip().endswith("}"):
        return s[s.index("{") :]
    return s


def parse_knob_reply(reply: str) -> tuple[str, dict[str, object]]:
    """(hypothesis, changes) from a JSON knob reply. Raises EditError on anything else."""
    _check_reply_size(reply)
    text = _strip_json_fence(reply)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EditError(f"reply is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise EditError("reply is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise EditError(f"reply JSON is a {type(data).__name__}, expected an object")
    hyp = data.get("hypothesis", "")
    if not isinstance(hyp, str):
        hyp = json.dumps(hyp)[:500]
    hyp = hyp.strip()[:500]
    changes = data.get("changes")
    if isinstance(changes, list):  # [{"name": ..., "value": ...}, ...] (the schema's form)
        as_dict: dict[str, object] = {}
        for item in changes:
            if not isinstance(item, dict) or set(item) != {"name", "value"} or not isinstance(item["name"], str):
                raise EditError('each item of "changes" must be {"name": CONSTANT, "value": ...}', hypothesis=hyp)
            if item["name"] in as_dict:
                raise EditError(f"the reply sets {item['name'][:40]} twice", hypothesis=hyp)
            as_dict[item["name"]] = item["value"]
        changes = as_dict
    if not isinstance(changes, dict):
        raise EditError('reply JSON has no "changes" list or object', hypothesis=hyp)
    if not changes:
        raise EditError('reply JSON "changes" is empty', hypothesis=hyp)
    if len(changes) > MAX_KNOB_CHANGES:
        raise EditError(
            f"the reply changes {len(changes)} constants; at most {MAX_KNOB_CHANGES} per proposal (one hypothesis)",
            hypothesis=hyp,
        )
    return hyp, changes


def _module_names(source: str) -> frozenset[str]:
    """Names bound at module level (constants, imports, functions, classes)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return frozenset(names)


def _render_value(knob: Knob, value: object, known_names: frozenset[str] = frozenset()) -> str:
    """Python source for a JSON value, checked against the knob's kind."""
    if isinstance(value, bool):
        if knob.kind not in ("bool", "expr"):
            raise EditError(f"{knob.name} is a {knob.kind}, got a boolean")
        return repr(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise EditError(f"{knob.name} must be a finite number, got {value}")
        if knob.kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise EditError(f"{knob.name} is an integer, got {value}")
            value = int(value)
        if knob.kind in ("str", "bool", "tuple"):
            raise EditError(f"{knob.name} is a {knob.kind}, got a number")
        if abs(value) > 1e12:
            raise EditError(f"{knob.name} = {value} is out of range")
        return repr(float(value)) if knob.kind == "float" else repr(value)
    if isinstance(value, list):
        if knob.kind not in ("tuple", "expr"):
            raise EditError(f"{knob.name} is a {knob.kind}, got a list")
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise EditError(f"{knob.name} must be a non-empty list of numbers")
        return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        if knob.kind == "str":
            if len(value) > 200 or "\n" in value:
                raise EditError(f"{knob.name} must be a short one-line string")
            return repr(value)
        expr = value.strip()
        try:
            tree = ast.parse(expr, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise EditError(f"{knob.name} value {value[:60]!r} is not a Python expression") from None
        if not _safe_value(tree.body) or "\n" in expr or len(expr) > 200:
            raise EditError(
                f"{knob.name} value {value[:60]!r} must be a one-line literal or arithmetic expression"
            )
        unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - known_names)
        if unknown:
            raise EditError(f"{knob.name} value {value[:60]!r} uses undefined name(s) {', '.join(unknown)[:80]}")
        return expr
    raise EditError(f"{knob.name} got a {type(value).__name__}; expected a number, boolean or string")


def apply_knobs(source: str, changes: dict[str, object], knobs: dict[str, Knob] | None = None) -> str:
    """Replace each named constant's value expression at its exact source span."""
    knobs = knobs if knobs is not None else find_knobs(source)
    unknown = [k for k in changes if k not in knobs]
    if unknown:
        known = ", ".join(sorted(knobs))
        raise EditError(f"unknown constant(s) {', '.join(map(str, unknown))[:200]}; {TARGET_FILE} defines: {known}")
    if len(changes) > MAX_KNOB_CHANGES:
        raise EditError(f"{len(changes)} constants changed; at most {MAX_KNOB_CHANGES} per proposal (one hypothesis)")
    names = _module_names(source)
    rendered = {name: _render_value(knobs[name], v, names) for name, v in changes.items()}
    lines = source.splitlines(keepends=True)
    # apply from the bottom up so earlier spans stay valid
    for name in sorted(rendered, key=lambda n: (knobs[n].lineno, knobs[n].col), reverse=True):
        k = knobs[name]
        first, last = lines[k.lineno - 1], lines[k.end_lineno - 1]
        new = first[: k.col] + rendered[name] + last[k.end_col :]
        lines[k.lineno - 1 : k.end_lineno] = [new]
    return "".join(lines)


# ---------------------------------------------------------------------------
# Validation


@functools.lru_cache(maxsize=16)
def _ast_dump(source: str) -> str:
    """The parent's normalized AST (cached: many children share one parent)."""
    return ast.dump(ast.parse(source))


def validate_train_py(parent: str, child: str) -> None:
    """Raise EditError unless `child` is a plausible train.py different from `parent`."""
    if not child.strip():
        raise EditError(f"the new {TARGET_FILE} is empty")
    if len(child) > MAX_FILE_CHARS:
        raise EditError(f"the new {TARGET_FILE} is {len(child)} characters, over the {MAX_FILE_CHARS} limit")
    try:
        compile(child, TARGET_FILE, "exec", dont_inherit=True)
        tree = ast.parse(child)
    except SyntaxError as e:
        where = f" (line {e.lineno})" if e.lineno else ""
        raise EditError(f"the new {TARGET_FILE} does not compile: {e.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise EditError(f"the new {TARGET_FILE} does not compile: {type(e).__name__}") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "build_model" for n in tree.body):
        raise EditError(f"the new {TARGET_FILE} no longer defines build_model at module level")
    if not any(_is_main_guard(n) for n in tree.body):
        raise EditError(f'the new {TARGET_FILE} lost its `if __name__ == "__main__":` guard')
    try:
        same = _ast_dump(parent) == ast.dump(tree)
    except SyntaxError:
        same = False
    if same:
        raise EditError("the edit is a no-op: the new train.py has the same code as its parent")


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    parts = [t.left, *t.comparators]
    has_name = any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts)
    has_main = any(isinstance(p, ast.Constant) and p.value == "__main__" for p in parts)
    return has_name and has_main and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq)
