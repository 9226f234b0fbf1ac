"""The typed move menu, the constraints between constants, the novelty gate, the
random-move baseline and the hypothesis rubric, on the real train_template.py, with
replies over real HTTP (the scripted OpenAI-compatible server)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agents import build_proposer, constants, moves, novelty, rubric
from agents.edits import EditError, apply_knobs
from agents.novelty import NoveltyIndex
from agents.personas import DEFAULT_PERSONAS, load_personas, with_model
from agents.proposal import InvalidEdit, Proposal, ProposalContext
from agents.scripted_server import ScriptedLLMServer

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()


def ctx(persona: str = "architect", **kw) -> ProposalContext:
    return ProposalContext(persona=persona, program="Lower val_bpb.", parent_id="root", parent_commit="0" * 40,
                           parent_train_py=TEMPLATE, **kw)


def config_for(srv: ScriptedLLMServer, fmt: str = "moves") -> dict:
    personas = {name: {"model": "openai/scripted", "edit_format": fmt} for name in DEFAULT_PERSONAS if name != "random"}
    return {"api_base": srv.api_base, "personas": personas}


# -- constants and constraints ------------------------------------------------------------


def test_constant_values_per_device_and_the_template_keeps_every_constraint():
    cpu, gpu = constants.values(TEMPLATE, False), constants.values(TEMPLATE, True)
    assert cpu["MODEL_DIM"] == 128 and gpu["MODEL_DIM"] == 256 and cpu["ADAM_BETAS"] == (0.9, 0.95)
    assert constants.violations(TEMPLATE) == []


@pytest.mark.parametrize("changes, words", [
    ({"N_HEADS": 3}, "not a multiple of N_HEADS"),
    ({"N_HEADS": 64, "MODEL_DIM": 192}, "must be even"),  # head size 3
    ({"N_HEADS": 0}, "positive integer"),
    ({"SEQ_LEN": 512}, "over the harness's context"),
    ({"WARMUP_FRAC": 0.7}, "WARMUP_FRAC + WARMDOWN_FRAC"),
    ({"OPTIMIZER": "sgd"}, "OPTIMIZER must be one of"),
])
def test_broken_relations_are_named(changes, words):
    found = constants.violations(apply_knobs(TEMPLATE, changes))
    assert found and any(words in v for v in found), found


# -- the menu -------------------------------------------------------------------------------


def test_the_menu_only_offers_moves_that_keep_the_constraints():
    menu = moves.menu(TEMPLATE)
    heads = sorted(m.factor for m in menu if m.op == "scale" and m.name == "N_HEADS")
    assert heads == [0.5, 2.0]  # 3 or 5 heads do not divide 128; 6 heads neither
    assert not any(m.op == "scale" and m.name == "SEQ_LEN" and m.factor > 1 for m in menu)  # GPU is at 256
    assert not any(m.op == "scale" and m.name == "WEIGHT_DECAY" for m in menu)  # 0 scaled is a no-op
    assert {m.value for m in menu if m.op == "activation"} == {"relu", "gelu", "silu"}
    for m in menu:
        child = moves.apply(TEMPLATE, m)
        assert constants.violations(child) == [] and child != TEMPLATE


def test_moves_apply_where_the_file_says_and_describe_names_the_change():
    child = moves.apply(TEMPLATE, moves.Move("scale", "MODEL_DIM", factor=1.5))
    assert "MODEL_DIM = 384 if ON_GPU else 192  # residual stream width" in child
    child = moves.apply(TEMPLATE, moves.Move("activation", value="gelu"))
    assert "return self.down(F.gelu(self.up(x)))" in child and "ReLU squared" not in child
    assert "DEPTH = 5  # transformer blocks" in moves.apply(TEMPLATE, moves.Move("depth", delta=1))
    text = moves.describe(TEMPLATE, moves.Move("scale", "LEARNING_RATE", factor=2.0))
    assert text == "scale LEARNING_RATE by 2 (3e-3 -> 0.006)"
    with pytest.raises(EditError, match="not a multiple of N_HEADS"):
        moves.apply(TEMPLATE, moves.Move("set", "N_HEADS", value=3))


def test_the_schema_enumerates_the_menu():
    schema = moves.schema(TEMPLATE)
    alts = schema["properties"]["move"]["anyOf"]
    heads = next(a for a in alts if a["properties"]["op"] == {"const": "scale"}
                 and a["properties"]["name"] == {"const": "N_HEADS"})
    assert heads["properties"]["factor"]["enum"] == [0.5, 2.0]
    assert schema["required"] == ["move", "reason"]


def test_a_moves_reply_over_http_gets_the_schema_and_a_hypothesis_naming_the_change():
    reply = json.dumps({"move": {"op": "scale", "name": "LEARNING_RATE", "factor": 2.0},
                        "reason": "a higher peak rate converges faster in a short budget"})
    with ScriptedLLMServer([reply]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(ctx("optimizer-tuner"))
        rf = srv.requests[0]["response_format"]
        prompt = srv.requests[0]["messages"][1]["content"]
    assert isinstance(out, Proposal) and out.edit_format == "moves"
    assert "LEARNING_RATE = 0.006" in out.train_py
    assert out.hypothesis.startswith("scale LEARNING_RATE by 2 (3e-3 -> 0.006): a higher peak rate")
    assert rf["schema"]["required"] == ["move", "reason"] and "## Moves you may choose" in prompt
    assert rubric.judge(TEMPLATE, out.train_py, out.hypothesis).matches


def test_a_move_that_breaks_a_constraint_gets_a_repair_round_trip():
    bad = json.dumps({"move": {"op": "set", "name": "N_HEADS", "value": 3}, "reason": "three heads see more"})
    good = json.dumps({"move": {"op": "set", "name": "N_HEADS", "value": 8}, "reason": "more heads attend wider"})
    with ScriptedLLMServer([bad, good]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(ctx())
        repair = srv.requests[1]["messages"][-1]["content"]
    assert "not a multiple of N_HEADS" in repair
    assert isinstance(out, Proposal) and "N_HEADS = 8" in out.train_py


def test_the_embedded_model_personas_use_the_move_menu():
    personas = with_model(load_personas({}), "openai/local", "http://127.0.0.1:1/v1", 8192)
    assert {p.edit_format for p in personas.values()} == {"moves"}


# -- novelty --------------------------------------------------------------------------------


def test_the_same_constant_values_written_differently_are_a_repeat():
    index = NoveltyIndex.build([("g001c00", apply_knobs(TEMPLATE, {"LEARNING_RATE": 0.006}), "rejected")])
    for written in ("6e-3", "0.006", "3e-3 * 2", "0.0060"):
        child = TEMPLATE.replace("LEARNING_RATE = 3e-3", f"LEARNING_RATE = {written}")
        refusal = novelty.check(child, index)
        assert refusal is not None and refusal.duplicate_of == "g001c00" and refusal.is_repeat, written
    assert novelty.check(TEMPLATE.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 5e-3"), index) is None


def test_the_same_code_after_renaming_and_reformatting_is_a_repeat():
    index = NoveltyIndex.build([("root", TEMPLATE, "measured")])
    renamed = TEMPLATE.replace("def rotary(x, cos, sin):\n    half = x.shape[-1] // 2\n"
                               "    x1, x2 = x[..., :half], x[..., half:]",
                               "def rotary(t, c, s):\n    \"\"\"Rotate pairs.\"\"\"\n    half = t.shape[-1] // 2\n"
                               "    x1, x2 = (t[..., :half],\n              t[..., half:])  # halves")
    renamed = renamed.replace("    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)",
                              "    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)")
    renamed = renamed.replace("rotary(", "apply_rope(")
    assert renamed != TEMPLATE
    assert novelty.check(renamed, index) is not None
    changed = renamed.replace("x1 * s + x2 * c", "x1 * s - x2 * c")
    assert novelty.check(changed, index) is None


@pytest.mark.slow
def test_the_menu_and_its_schema_leave_out_moves_that_repeat_a_known_program():
    seen = apply_knobs(TEMPLATE, {"DEPTH": 5})
    index = NoveltyIndex.build([("root", TEMPLATE, "measured"), ("g001c00", seen, "rejected: not better")])
    full, fresh = moves.menu(TEMPLATE), moves.menu(TEMPLATE, index)
    assert [m for m in full if m not in fresh] == [moves.Move("depth", delta=1)]
    depth = next(a for a in moves.schema(TEMPLATE, index)["properties"]["move"]["anyOf"]
                 if a["properties"]["op"] == {"const": "depth"})
    assert depth["properties"]["delta"]["enum"] == [-1]
    assert '"op": "depth", "delta": one of -1}' in moves.render_menu(TEMPLATE, index)


def test_a_repeat_goes_back_to_the_model_and_is_counted_on_the_answer():
    seen = apply_knobs(TEMPLATE, {"DEPTH": 5})
    index = NoveltyIndex.build([("root", TEMPLATE, "measured"), ("g001c00", seen, "rejected: not better")])
    again = json.dumps({"move": {"op": "depth", "delta": 1}, "reason": "one more block adds capacity"})
    other = json.dumps({"move": {"op": "depth", "delta": -1}, "reason": "one block fewer trains more steps"})
    with ScriptedLLMServer([again, other]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(ctx(novelty=index))
        repair = srv.requests[1]["messages"][-1]["content"]
        offered = srv.requests[0]["response_format"]["schema"]["properties"]["move"]["anyOf"]
    assert "g001c00" in repair and "refused before any training" in repair
    assert {"const": "depth"} in [a["properties"]["op"] for a in offered]
    assert all(a["properties"].get("delta", {}).get("enum") != [1, -1] for a in offered)
    assert isinstance(out, Proposal) and "DEPTH = 3" in out.train_py
    assert [r.duplicate_of for r in out.refusals] == ["g001c00"]
    with ScriptedLLMServer([again] * 3) as srv:
        out = build_proposer(config_for(srv), None, None).propose(ctx(novelty=index))
        assert len(srv.requests) == 3  # the first reply and two repairs, no more
    assert isinstance(out, InvalidEdit) and len(out.refusals) == 3 and "same_knobs" in out.reason


# -- the random baseline ---------------------------------------------------------------------


def test_the_random_persona_proposes_new_valid_moves_without_any_llm():
    personas = load_personas({"personas": {"random": {"enabled": True}, "architect": {"enabled": False},
                                            "optimizer-tuner": {"enabled": False}, "bug-hunter": {"enabled": False}}})
    assert list(personas) == ["random"]
    proposer = build_proposer({"model": "random", "personas": {"random": {"enabled": True}}}, None, None)
    assert {p.model for p in proposer.personas.values()} == {"random"}  # model = "random": all of them
    tried: list[str] = []
    seen = [("root", TEMPLATE, "measured")]
    for _ in range(6):
        out = proposer.propose(ctx("random", tried=list(tried), novelty=NoveltyIndex.build(seen)))
        assert isinstance(out, Proposal) and out.model == "random" and out.edit_format == "moves"
        assert constants.violations(out.train_py) == []
        assert rubric.judge(TEMPLATE, out.train_py, out.hypothesis).matches, out.hypothesis
        seen.append((f"c{len(seen)}", out.train_py, "queued"))
        tried.append(out.hypothesis)
    assert proposer.client.calls == 0
    assert len({novelty.signature(t).code for _, t, _ in seen}) == len(seen)  # never a repeat
    again = proposer.propose(ctx("random", tried=tried[:2], novelty=NoveltyIndex.build(seen)))
    assert isinstance(again, Proposal)  # the same draw was a repeat: it drew another


def test_random_moves_pick_what_to_change_uniformly():
    rng = random.Random(1)
    kinds = {(m.op, m.name) for m in (moves.random_move(TEMPLATE, rng) for _ in range(200))}
    assert ("depth", "") in kinds and ("optimizer", "") in kinds and ("activation", "") in kinds


# -- the rubric -------------------------------------------------------------------------------


def test_the_rubric_on_the_issues_examples():
    child = apply_knobs(TEMPLATE, {"LEARNING_RATE": 0.006})
    yes = rubric.judge(TEMPLATE, child, "Increase the learning rate so the model converges faster and lowers val_bpb")
    assert yes.matches and yes.changed == ("LEARNING_RATE",)
    wrong_way = rubric.judge(TEMPLATE, child, "reduce LEARNING_RATE for stability")
    assert not wrong_way.matches and "goes down" in wrong_way.problems[0]
    stray = rubric.judge(TEMPLATE, child, "change N_HEADS and ROPE_BASE to ensure that the model is causal")
    assert not stray.matches and any("does not name LEARNING_RATE" in p for p in stray.problems)
    assert any("names N_HEADS" in p for p in stray.problems)
    act = moves.apply(TEMPLATE, moves.Move("activation", value="silu"))
    assert rubric.judge(TEMPLATE, act, "SiLU activation in the MLP is smoother").matches
    assert not rubric.judge(TEMPLATE, act, "raise DEPTH").matches
