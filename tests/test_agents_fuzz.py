"""Fuzz: 1000 malformed replies each become an InvalidEdit with a reason; nothing crashes.

Most replies go straight through `LLMProposer.edit_from_reply` (the parsing and
validation path the proposer uses after the HTTP call); a sample also goes through the
whole proposer over real HTTP to the scripted server."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from agents import build_proposer
from agents.edits import find_knobs
from agents.personas import DEFAULT_PERSONAS, load_personas
from agents.proposal import InvalidEdit, ProposalContext
from agents.scripted_server import ScriptedLLMServer

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()
LINES = TEMPLATE.splitlines()
KNOBS = sorted(find_knobs(TEMPLATE))

GOOD_SR = (
    "HYPOTHESIS: shorter warm-up\ntrain.py\n<<<<<<< SEARCH\n"
    "WARMUP_FRAC = 0.02  # fraction of the budget spent warming the learning rate up\n=======\n"
    "WARMUP_FRAC = 0.01  # fraction of the budget spent warming the learning rate up\n>>>>>>> REPLACE\n"
)
GOOD_KNOBS = json.dumps({"hypothesis": "shorter warm-up helps a short run", "changes": {"WARMUP_FRAC": 0.01}})


def _random_text(rng: random.Random) -> str:
    alphabet = string.printable + "éü中文🙂\x00\x1b"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))


def _block(search: str, replace: str, filename: str = "train.py") -> str:
    return f"HYPOTHESIS: h\n{filename}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def _snippet(rng: random.Random) -> str:
    i = rng.randrange(len(LINES) - 3)
    return "\n".join(LINES[i : i + rng.randint(1, 3)])


def search_replace_cases(rng: random.Random) -> list[tuple[str, str]]:
    """(category, reply) pairs that must all be refused in the search_replace format."""
    gens = {
        "random text": lambda: _random_text(rng),
        "truncated block": lambda: GOOD_SR[: rng.randint(0, GOOD_SR.index(">>>>>>> REPLACE") - 1)],
        "block for another file": lambda: _block(
            "SEQ_LEN = 2048", "SEQ_LEN = 4096", rng.choice(["prepare.py", "src/train.py", "../prepare.py", "program.md"])
        ),
        "search not in file": lambda: _block(_random_text(rng).replace("=", "") + "zz_missing", "x = 1"),
        "enormous output": lambda: GOOD_SR + "x" * rng.randint(200_001, 400_000),
        "enormous replacement": lambda: _block(
            "GRAD_CLIP = 1.0", "GRAD_CLIP = 1.0\n" + "# pad\n" * rng.randint(30_000, 40_000)
        ),
        "breaks syntax": lambda: _block("GRAD_CLIP = 1.0", rng.choice(["GRAD_CLIP = (", "def (:", "GRAD_CLIP = 1.0\n  x = 2", "\x00"])),
        "removes build_model": lambda: _block("def build_model(**kw):", "def make_model(**kw):"),
        "removes main guard": lambda: _block('if __name__ == "__main__":\n    main()', "main()"),
        "no-op": lambda: (lambda s: _block(s, s))(_snippet(rng)),
        "whitespace-only change": lambda: _block("GRAD_CLIP = 1.0", "GRAD_CLIP   =   1.0   # same"),
        "empty search": lambda: _block("", "x = 1"),
        "ambiguous search": lambda: _block("        super().__init__()", "        super().__init__()  # x"),
        "json in search format": lambda: GOOD_KNOBS,
        "markers only": lambda: rng.choice(["<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE", "```python\n```"]),
        "nested markers": lambda: "<<<<<<< SEARCH\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n",
        "fenced garbage": lambda: "HYPOTHESIS: rewrite\n```python\n" + _random_text(rng) + "\n```\n",
    }
    names = sorted(gens)
    return [(names[i % len(names)], gens[names[i % len(names)]]()) for i in range(600)]


def knob_cases(rng: random.Random) -> list[tuple[str, str]]:
    def changes(c: object) -> str:
        return json.dumps({"hypothesis": "h" * 12, "changes": c})

    gens = {
        "random text": lambda: _random_text(rng),
        "invalid JSON": lambda: GOOD_KNOBS[: rng.randint(0, len(GOOD_KNOBS) - 2)],
        "JSON not an object": lambda: json.dumps(rng.choice([[1, 2], "str", 3, None, True])),
        "no changes": lambda: json.dumps({"hypothesis": "h"}),
        "empty changes": lambda: changes({}),
        "changes not an object": lambda: changes(rng.choice([[["DEPTH", 6]], "DEPTH=6", 6])),
        "key not in train.py": lambda: changes({rng.choice(["DEPHT", "LR", "NUM_LAYERS", "prepare", "ON_GPU", "torch"]): 3}),
        "wrong type": lambda: changes({rng.choice(["DEPTH", "MODEL_DIM", "N_HEADS"]): rng.choice([2.5, "deep", [1], {"a": 1}, None])}),
        "code injection": lambda: changes({"LEARNING_RATE": rng.choice(["__import__('os').system('x')", "open('/etc/passwd')", "lambda: 1", "[x for x in ()]"])}),
        "non-finite": lambda: '{"hypothesis": "hhhhhhhhhhhh", "changes": {"LEARNING_RATE": ' + rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]) + "}}",
        "no-op value": lambda: changes({"LEARNING_RATE": 0.003, "GRAD_CLIP": 1}),
        "deeply nested": lambda: "[" * rng.randint(10_000, 100_000) + "]" * 10,
        "enormous output": lambda: changes({"LEARNING_RATE": 0.001}) + " " * 250_000,
        "string with newline": lambda: changes({"OPTIMIZER": "adamw\nimport os"}),
        "huge number": lambda: changes({"DEPTH": 10**15}),
        "too many changes": lambda: changes({k: 1 for k in ("DEPTH", "MLP_RATIO", "N_HEADS", "MODEL_DIM")}),
    }
    names = sorted(gens)
    return [(names[i % len(names)], gens[names[i % len(names)]]()) for i in range(400)]


def _ctx() -> ProposalContext:
    return ProposalContext(persona="architect", program="", parent_id="c0", parent_commit="0" * 40, parent_train_py=TEMPLATE)


def test_thousand_malformed_replies_become_invalid_edits():
    rng = random.Random(1234)
    personas = load_personas({"model": "openai/fuzz"})
    from agents.llm import LLMClient
    from agents.proposer import LLMProposer

    proposer = LLMProposer(personas, LLMClient())
    persona = personas["architect"]
    cases = [("search_replace", c, r) for c, r in search_replace_cases(rng)]
    cases += [("knobs", c, r) for c, r in knob_cases(rng)]
    assert len(cases) == 1000
    by_category: dict[str, int] = {}
    for fmt, category, reply in cases:
        out = proposer.edit_from_reply(_ctx(), persona, fmt, reply)
        assert isinstance(out, InvalidEdit), f"{fmt}/{category} was accepted: {reply[:200]!r}"
        assert out.reason and "\n" not in out.reason, f"{fmt}/{category}: reason {out.reason!r}"
        assert not out.reason.startswith("internal error"), f"{fmt}/{category}: {out.reason}"
        by_category[f"{fmt}/{category}"] = by_category.get(f"{fmt}/{category}", 0) + 1
    assert len(by_category) == 33
    # the well-formed controls do pass, so the refusals above are about the input
    assert not isinstance(proposer.edit_from_reply(_ctx(), persona, "search_replace", GOOD_SR), InvalidEdit)
    assert not isinstance(proposer.edit_from_reply(_ctx(), persona, "knobs", GOOD_KNOBS), InvalidEdit)


def test_malformed_replies_over_http():
    rng = random.Random(99)
    sample = [r for _, r in search_replace_cases(rng)][::100]  # 6 replies of different kinds
    with ScriptedLLMServer(sample) as srv:
        personas = {n: {"model": "openai/scripted"} for n in DEFAULT_PERSONAS}
        proposer = build_proposer({"api_base": srv.api_base, "personas": personas}, None, None, max_retries=0)
        proposer.max_repairs = 0  # one request per reply, so the script lines up
        outs = [proposer.propose(ProposalContext(**{**_ctx().__dict__, "persona": "optimizer-tuner"})) for _ in sample]
    assert all(isinstance(o, InvalidEdit) and o.reason for o in outs)
    assert len(srv.requests) == len(sample)
