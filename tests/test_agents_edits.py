"""Edit formats and validation (agents.edits) against the real seed train.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from agents.edits import (
    EditError,
    apply_knobs,
    apply_search_replace,
    extract_hypothesis,
    find_knobs,
    knob_schema,
    parse_knob_reply,
    parse_search_replace,
    parse_whole_file,
    validate_train_py,
)

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()


def _module_value(source: str, name: str) -> str:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.get_source_segment(source, node.value) or ""
    raise KeyError(name)


# -- SEARCH/REPLACE ----------------------------------------------------------------


def test_search_replace_exact_block_applies():
    reply = (
        "HYPOTHESIS: a lower learning rate is more stable\n\ntrain.py\n"
        "<<<<<<< SEARCH\nLEARNING_RATE = 3e-3  # AdamW peak learning rate\n=======\n"
        "LEARNING_RATE = 2e-3  # AdamW peak learning rate\n>>>>>>> REPLACE\n"
    )
    blocks = parse_search_replace(reply)
    child = apply_search_replace(TEMPLATE, blocks)
    assert _module_value(child, "LEARNING_RATE") == "2e-3"
    assert extract_hypothesis(reply) == "a lower learning rate is more stable"
    validate_train_py(TEMPLATE, child)


def test_search_replace_tolerates_indentation_and_trailing_spaces():
    # the model dropped the indentation of a method body and added trailing spaces
    reply = (
        "```python\n<<<<<<< SEARCH\ndef forward(self, x):   \nreturn self.down(F.relu(self.up(x)).square())  # ReLU squared\n"
        "=======\ndef forward(self, x):\n    return self.down(F.gelu(self.up(x)))\n>>>>>>> REPLACE\n```\n"
    )
    child = apply_search_replace(TEMPLATE, parse_search_replace(reply))
    assert "        return self.down(F.gelu(self.up(x)))" in child
    assert "    def forward(self, x):\n        return self.down(F.gelu" in child
    validate_train_py(TEMPLATE, child)


def test_unmatched_block_error_names_the_block():
    reply = (
        "<<<<<<< SEARCH\nGRAD_CLIP = 1.0\n=======\nGRAD_CLIP = 0.5\n>>>>>>> REPLACE\n"
        "<<<<<<< SEARCH\nTHIS_LINE_IS_NOT_THERE = 1\n=======\nX = 2\n>>>>>>> REPLACE\n"
    )
    with pytest.raises(EditError) as e:
        apply_search_replace(TEMPLATE, parse_search_replace(reply))
    assert e.value.unmatched_block == 2
    assert "block 2" in str(e.value) and "THIS_LINE_IS_NOT_THERE" in str(e.value)


def test_ambiguous_block_is_refused():
    reply = "<<<<<<< SEARCH\n        super().__init__()\n=======\n        super().__init__()  # hi\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="matches .* places"):
        apply_search_replace(TEMPLATE, parse_search_replace(reply))


def test_block_for_another_file_is_refused():
    reply = "prepare.py\n<<<<<<< SEARCH\nSEQ_LEN = 1\n=======\nSEQ_LEN = 2\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="edits prepare.py; only train.py"):
        apply_search_replace(TEMPLATE, parse_search_replace(reply))


@pytest.mark.parametrize(
    "reply,match",
    [
        ("no blocks here", "no <<<<<<< SEARCH"),
        ("<<<<<<< SEARCH\nGRAD_CLIP = 1.0\n", "truncated"),
        ("<<<<<<< SEARCH\nGRAD_CLIP = 1.0\n=======\nGRAD_CLIP = 2.0\n", "truncated"),
        ("", "empty"),
        ("x" * 300_000, "over the"),
    ],
)
def test_malformed_search_replace(reply, match):
    with pytest.raises(EditError, match=match):
        parse_search_replace(reply)


# -- whole file --------------------------------------------------------------------


def test_whole_file_reply():
    new = TEMPLATE.replace("GRAD_CLIP = 1.0", "GRAD_CLIP = 0.5")
    child = parse_whole_file(f"HYPOTHESIS: tighter clipping\n```python\n{new}```\n")
    assert child == new
    validate_train_py(TEMPLATE, child)


# -- knobs -------------------------------------------------------------------------


def test_find_knobs_on_the_template():
    knobs = find_knobs(TEMPLATE)
    assert {"DEPTH", "MODEL_DIM", "LEARNING_RATE", "WARMDOWN_FRAC", "ADAM_BETAS"} <= set(knobs)
    assert "ON_GPU" not in knobs  # computed by a call: not a knob
    assert knobs["MODEL_DIM"].source == "256 if ON_GPU else 128"
    assert knobs["MODEL_DIM"].kind == "int"
    assert knobs["LEARNING_RATE"].kind == "float" and knobs["OPTIMIZER"].kind == "str"


def test_apply_knobs_replaces_exact_spans_and_keeps_comments():
    child = apply_knobs(TEMPLATE, {"MODEL_DIM": 192, "ADAM_BETAS": [0.9, 0.99], "OPTIMIZER": "adamw"})
    assert "MODEL_DIM = 192  # residual stream width\n" in child
    assert "ADAM_BETAS = (0.9, 0.99)\n" in child
    assert "OPTIMIZER = 'adamw'  # " in child
    validate_train_py(TEMPLATE, child)
    # only those three lines changed
    changed = [a for a, b in zip(TEMPLATE.splitlines(), child.splitlines()) if a != b]
    assert len(changed) == 3 and len(child.splitlines()) == len(TEMPLATE.splitlines())
    with pytest.raises(EditError, match="at most 3"):
        apply_knobs(TEMPLATE, {"MODEL_DIM": 192, "GRAD_CLIP": 0.5, "WARMUP_FRAC": 0.1, "DEPTH": 6})


def test_apply_knobs_accepts_an_expression_string_and_multiline_values(tmp_path):
    src = 'X = (\n    1,\n    2,\n)\nLR = 1e-3 * 2\n\ndef build_model(**kw):\n    return None\n\nif __name__ == "__main__":\n    pass\n'
    knobs = find_knobs(src)
    assert knobs["X"].lineno == 1 and knobs["X"].end_lineno == 4
    child = apply_knobs(src, {"X": [3, 4], "LR": "5e-4 if X else 1e-3"})
    assert child.startswith("X = (3, 4)\nLR = 5e-4 if X else 1e-3\n")
    validate_train_py(src, child)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"NOT_A_KNOB": 1}, "unknown constant"),
        ({"DEPTH": 2.5}, "integer"),
        ({"DEPTH": "__import__('os')"}, "literal or arithmetic"),
        ({"DEPTH": "1 +"}, "not a Python expression"),
        ({"N_HEADS": "deep"}, "undefined name"),
        ({"OPTIMIZER": 3}, "str, got a number"),
        ({"LEARNING_RATE": {"a": 1}}, "expected a number"),
        ({"LEARNING_RATE": 1e300}, "out of range"),
    ],
)
def test_bad_knob_values(changes, match):
    with pytest.raises(EditError, match=match):
        apply_knobs(TEMPLATE, changes)


def test_knob_reply_parsing_and_schema():
    hyp, changes = parse_knob_reply('```json\n{"hypothesis": "warm down longer", "changes": {"WARMDOWN_FRAC": 0.6}}\n```')
    assert hyp == "warm down longer" and changes == {"WARMDOWN_FRAC": 0.6}
    hyp, changes = parse_knob_reply('{"hypothesis": "h", "changes": [{"name": "DEPTH", "value": 6}, {"name": "GRAD_CLIP", "value": 0.5}]}')
    assert changes == {"DEPTH": 6, "GRAD_CLIP": 0.5}
    schema = knob_schema(find_knobs(TEMPLATE))
    ch = schema["properties"]["changes"]
    assert ch["maxItems"] == 3 and ch["minItems"] == 1
    depth = next(i for i in ch["items"]["anyOf"] if i["properties"]["name"] == {"const": "DEPTH"})
    assert depth["properties"]["value"] == {"type": "integer"} and depth["additionalProperties"] is False
    json.dumps(schema)
    for bad, match in [
        ("{", "not valid JSON"),
        ("[1]", "expected an object"),
        ('{"changes": {}}', "empty"),
        ('{"x": 1}', "no \"changes\""),
        ('{"changes": [{"name": "DEPTH"}]}', "must be"),
        ('{"changes": [{"name": "DEPTH", "value": 1}, {"name": "DEPTH", "value": 2}]}', "twice"),
    ]:
        with pytest.raises(EditError, match=match):
            parse_knob_reply(bad)


# -- validation --------------------------------------------------------------------


def test_validation_refuses_broken_contracts():
    with pytest.raises(EditError, match="does not compile"):
        validate_train_py(TEMPLATE, TEMPLATE + "\ndef broken(:\n")
    with pytest.raises(EditError, match="build_model"):
        validate_train_py(TEMPLATE, TEMPLATE.replace("def build_model(", "def make_model("))
    with pytest.raises(EditError, match="guard"):
        validate_train_py(TEMPLATE, TEMPLATE.replace('if __name__ == "__main__":\n    main()', "main()"))
    with pytest.raises(EditError, match="no-op"):
        validate_train_py(TEMPLATE, TEMPLATE.replace("GRAD_CLIP = 1.0", "GRAD_CLIP = 1.0   # same"))
    with pytest.raises(EditError, match="no-op"):
        validate_train_py(TEMPLATE, apply_knobs(TEMPLATE, {"LEARNING_RATE": 0.003}))
