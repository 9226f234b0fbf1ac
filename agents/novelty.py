"""The novelty gate: refuse a proposal that repeats one already measured or refused.

Flow: the population builds a `NoveltyIndex` from every candidate committed as of the
archive version the child was planned from, plus the siblings planned before it
(measured, refused or still queued, the parent and its ancestors included;
population.planning.Planner.novelty_index) and hands it to the proposer in the
`ProposalContext`; crossovers pass the same gate (agents.crossover.gated_crossover); `LLMProposer` calls `check` on each valid
child before it returns it. A repeat is a `Refusal` whose reason the model sees in a
repair round trip ("propose something else"), and the loop counts every refusal as
device time saved (an event). Two programs are the same when

- their constants (module-level UPPER_CASE values, `agents.edits.find_knobs`) have the
  same final values, compared as numbers where they evaluate (``3e-3`` = ``0.003``),
  and the rest of the code is the same; or
- their code is the same after normalising formatting, comments, docstrings and the
  names of local variables, functions and classes (AST-based): a renamed variable or a
  reformatted block is not a new experiment.

Both are judged on the whole resulting file, so reverting to an ancestor counts as a
repeat too. It does not decide anything about code that differs (that is the arena's
job) and never runs the code.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from agents import constants
from agents.edits import EditError, find_knobs

_KEEP = frozenset(dir(builtins)) | {"build_model", "main", "self", "cls", "__name__"}


@dataclass(frozen=True)
class Signature:
    """What identifies a program: the values of its constants plus the rest of its code,
    and its code with names normalised."""

    knobs: str  # hash of (constant values, code without the constants)
    code: str  # hash of the name-normalised AST


@dataclass(frozen=True)
class KnownProgram:
    candidate_id: str
    outcome: str  # "measured: val_bpb 2.31", "crashed: ...", "queued"...


@dataclass(frozen=True)
class Refusal:
    """Why a proposal is not sent to the arena. `kind`: "same_knobs" or "same_code"
    (novelty), or the name of another check ("preflight", "constraints")."""

    kind: str
    reason: str  # one line, shown to the model and stored
    duplicate_of: str | None = None

    @property
    def is_repeat(self) -> bool:
        """Refused by the novelty gate (a repeat), not by another check."""
        return self.kind in ("same_knobs", "same_code")


@dataclass(frozen=True)
class NoveltyIndex:
    """Signatures of the programs the population already has, by signature."""

    by_knobs: dict[str, KnownProgram] = field(default_factory=dict)
    by_code: dict[str, KnownProgram] = field(default_factory=dict)

    @classmethod
    def build(cls, programs: Iterable[tuple[str, str, str]]) -> NoveltyIndex:
        """From (candidate id, train.py, outcome) triples; an unparsable file is skipped
        (it cannot be repeated by a valid proposal anyway). The first one of a signature wins."""
        by_knobs: dict[str, KnownProgram] = {}
        by_code: dict[str, KnownProgram] = {}
        for cid, source, outcome in programs:
            try:
                sig = signature(source)
            except EditError:
                continue
            known = KnownProgram(cid, outcome)
            by_knobs.setdefault(sig.knobs, known)
            by_code.setdefault(sig.code, known)
        return cls(by_knobs, by_code)

    def __len__(self) -> int:
        return len(self.by_code)


def _constant_values(source: str, knobs: dict) -> list[tuple[str, str]]:
    """Each constant's final value on CPU and on CUDA (numbers as floats, so ``3e-3``,
    ``0.003`` and ``6e-3 / 2`` agree); a constant that does not evaluate keeps its
    normalised expression."""
    cpu, gpu = constants.values(source, False), constants.values(source, True)

    def norm(v: object) -> object:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, tuple):
            return tuple(norm(x) for x in v)
        return v

    out = []
    for name, k in knobs.items():
        if name in cpu and name in gpu:
            out.append((name, repr((norm(cpu[name]), norm(gpu[name])))))
        else:
            out.append((name, ast.dump(_fold(ast.parse(k.source.strip(), mode="eval")))))
    return sorted(out)


def _fold(tree: ast.AST) -> ast.AST:
    """Literal numbers inside an expression as floats (``256`` and ``256.0`` alike)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            node.value = float(node.value)
    return tree


class _Normalise(ast.NodeTransformer):
    """Renames bound names to canonical ones: module-level functions, classes and
    lower-case globals to g0, g1, ... in file order; each function's locals and
    arguments to v0, v1, ... in order of first appearance within that function. Keeps
    UPPER_CASE constants, builtins, imports, attributes and the contract's names. Drops
    docstrings and annotations."""

    def __init__(self, tree: ast.Module) -> None:
        self.keep = _KEEP | _imported(tree)
        self.globals: dict[str, str] = {}
        for node in tree.body:
            bound: list[str] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bound = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for name in bound:
                if name not in self.keep and not name.isupper():
                    self.globals.setdefault(name, f"g{len(self.globals)}")
        self.scopes: list[dict[str, str]] = []

    def _name(self, name: str) -> str:
        if name in self.keep or name.isupper():
            return name
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.globals:
            return self.globals[name]
        if not self.scopes:
            return name
        scope = self.scopes[-1]
        return scope.setdefault(name, f"v{len(self.scopes)}_{len(scope)}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._name(node.arg)
        node.annotation = None
        return node

    @staticmethod
    def _drop_docstring(node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self._name(node.name)
        node.returns = None
        self._drop_docstring(node)
        for d in node.decorator_list:
            self.visit(d)
        self.scopes.append({})
        self.visit(node.args)
        node.body = [self.visit(s) for s in node.body]
        self.scopes.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.name = self._name(node.name)
        self._drop_docstring(node)
        self.generic_visit(node)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        self._drop_docstring(node)
        self.generic_visit(node)
        return node


def _imported(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def signature(source: str) -> Signature:
    """The program's signature. Raises EditError when it does not parse."""
    knobs = find_knobs(source)
    tree = ast.parse(source)
    values = _constant_values(source, knobs)
    # the code without the constants' values: each constant's value replaced by a marker
    rest = ast.parse(source)
    for node in rest.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id in knobs:
            node.value = ast.Constant(None)  # type: ignore[union-attr]
    rest_dump = ast.dump(_Normalise(rest).visit(rest))
    code_dump = ast.dump(_Normalise(tree).visit(_fold(tree)))
    return Signature(knobs=_digest(repr(values) + rest_dump), code=_digest(code_dump))


def check(train_py: str, index: NoveltyIndex | None) -> Refusal | None:
    """A `Refusal` when `train_py` repeats a program of `index`, else None."""
    if index is None:
        return None
    try:
        sig = signature(train_py)
    except EditError:
        return None  # validation refuses it elsewhere
    hit = index.by_knobs.get(sig.knobs)
    if hit is not None:
        return Refusal("same_knobs", f"this repeats {hit.candidate_id} ({hit.outcome}): the same constant "
                       "values and otherwise the same code; propose a change not tried yet", hit.candidate_id)
    hit = index.by_code.get(sig.code)
    if hit is not None:
        return Refusal("same_code", f"this code is the same as {hit.candidate_id} ({hit.outcome}) once "
                       "formatting and names are normalised; propose a change not tried yet", hit.candidate_id)
    return None
