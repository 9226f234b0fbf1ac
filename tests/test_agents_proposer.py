"""LLMProposer end to end over real HTTP (scripted OpenAI-compatible server), personas
from a program.md-style dict, and prompt assembly and trimming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import build_proposer, needs_embedded_model
from agents.edits import find_knobs
from agents.llm import CostCeilingReached, LLMCallRecord, MissingAPIKey
from agents.personas import DEFAULT_PERSONAS, PersonaConfigError, load_personas
from agents.prompts import build_prompt, estimate_tokens
from agents.proposal import ArchiveRow, Failure, InvalidEdit, LineageStep, Proposal, ProposalContext
from agents.scripted_server import ScriptedError, ScriptedLLMServer

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()

GOOD_SR = (
    "HYPOTHESIS: a longer warm-down anneals better in a short budget\n\ntrain.py\n"
    "<<<<<<< SEARCH\nWARMDOWN_FRAC = 0.4  # fraction of the budget at the end spent decaying it to zero\n"
    "=======\nWARMDOWN_FRAC = 0.6  # fraction of the budget at the end spent decaying it to zero\n"
    ">>>>>>> REPLACE\n"
)
BAD_SR = "HYPOTHESIS: something\n<<<<<<< SEARCH\nWARMDOWN_FRAC = 0.45\n=======\nWARMDOWN_FRAC = 0.6\n>>>>>>> REPLACE\n"


def make_ctx(persona: str = "optimizer-tuner", **kw) -> ProposalContext:
    base = dict(
        persona=persona,
        program="Lower val_bpb on CPU within the budget.",
        parent_id="c0",
        parent_commit="0" * 40,
        parent_train_py=TEMPLATE,
        lineage=[LineageStep("0" * 40, "seed", "the seed", 1.90, 0.01, None, "confirmed")],
        archive=[ArchiveRow("c0", "0" * 40, "seed", "the seed", 1.90, 0.01, 300.0, 3)],
        failures=[Failure("c7", "architect", "depth 64", "timeout", "killed at budget + 30 s")],
        tried=["lower LEARNING_RATE to 1e-3"],
        noise_floor=0.01,
    )
    base.update(kw)
    return ProposalContext(**base)


def config_for(srv: ScriptedLLMServer, **persona_overrides) -> dict:
    personas = {name: {"model": "openai/scripted"} for name in DEFAULT_PERSONAS}
    for name, over in persona_overrides.items():
        personas.setdefault(name, {}).update(over)
    return {"api_base": srv.api_base, "personas": personas}


def test_search_replace_proposal_over_http():
    records: list[LLMCallRecord] = []
    with ScriptedLLMServer([GOOD_SR]) as srv:
        proposer = build_proposer(config_for(srv), records.append, cost_ceiling_usd=1.0)
        out = proposer.propose(make_ctx())
        prompt = srv.requests[0]["messages"]
    assert isinstance(out, Proposal), out
    assert out.edit_format == "search_replace" and out.persona == "optimizer-tuner" and out.model == "openai/scripted"
    assert out.hypothesis == "a longer warm-down anneals better in a short budget"
    assert "WARMDOWN_FRAC = 0.6" in out.train_py and out.parent_commit == "0" * 40
    # the prompt carried the persona brief, lineage, archive, failures and ideas tried
    text = prompt[0]["content"] + prompt[1]["content"]
    for needle in ("optimizer tuner", "1.9000 ± 0.0100", "killed at budget", "lower LEARNING_RATE to 1e-3", "def build_model"):
        assert needle in text
    assert [r.persona for r in records] == ["optimizer-tuner"] and records[0].error is None


def test_unmatched_block_gets_one_repair_round_trip():
    with ScriptedLLMServer([BAD_SR, GOOD_SR]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(make_ctx())
        assert len(srv.requests) == 2
        repair_turn = srv.requests[1]["messages"]
    assert isinstance(out, Proposal)
    assert repair_turn[-2] == {"role": "assistant", "content": BAD_SR}
    assert "block 1" in repair_turn[-1]["content"] and "does not match" in repair_turn[-1]["content"]


def test_failed_repair_is_an_invalid_edit_naming_both_errors():
    with ScriptedLLMServer([BAD_SR]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(make_ctx())
        assert len(srv.requests) == 2  # one repair, no more
    assert isinstance(out, InvalidEdit)
    assert "after one repair" in out.reason and "block 1" in out.reason and out.raw_reply == BAD_SR


def test_whole_file_fallback_inside_search_replace_format():
    new = TEMPLATE.replace("GRAD_CLIP = 1.0", "GRAD_CLIP = 0.5")
    with ScriptedLLMServer([f"HYPOTHESIS: clip harder\n```python\n{new}```"]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(make_ctx())
    assert isinstance(out, Proposal) and out.edit_format == "whole_file" and out.train_py == new


def test_knob_format_sends_a_schema_to_a_local_server():
    reply = json.dumps({"hypothesis": "a deeper model uses the budget better", "changes": {"DEPTH": 6}})
    with ScriptedLLMServer([reply]) as srv:
        cfg = config_for(srv, architect={"edit_format": "knobs"})
        out = build_proposer(cfg, None, None).propose(make_ctx("architect"))
        rf = srv.requests[0]["response_format"]
    assert isinstance(out, Proposal) and out.edit_format == "knobs"
    assert "DEPTH = 6  # transformer blocks" in out.train_py
    names = {i["properties"]["name"]["const"] for i in rf["schema"]["properties"]["changes"]["items"]["anyOf"]}
    assert rf["type"] == "json_object" and names == set(find_knobs(TEMPLATE))


def test_llm_failure_after_retries_is_an_invalid_edit(monkeypatch):
    with ScriptedLLMServer([ScriptedError(500)]) as srv:
        proposer = build_proposer(config_for(srv), None, None, max_retries=1)
        proposer.client._sleep = lambda s: None
        out = proposer.propose(make_ctx())
    assert isinstance(out, InvalidEdit) and out.reason.startswith("llm call failed")


def test_bug_hunter_repairs_the_broken_candidate():
    broken = TEMPLATE.replace("x = x + self.attn(rms_norm(x), cos, sin)", "x = x + self.atn(rms_norm(x), cos, sin)")
    reply = (
        "HYPOTHESIS: fix the attribute typo that crashed the run\n<<<<<<< SEARCH\n"
        "        x = x + self.atn(rms_norm(x), cos, sin)\n=======\n"
        "        x = x + self.attn(rms_norm(x), cos, sin)\n>>>>>>> REPLACE\n"
    )
    fail = Failure("c9", "architect", "rename attention", "crashed", "AttributeError: 'Block' object has no attribute 'atn'")
    ctx = make_ctx("bug-hunter", repair_of=fail, repair_train_py=broken)
    with ScriptedLLMServer([reply]) as srv:
        out = build_proposer(config_for(srv), None, None).propose(ctx)
        user = srv.requests[0]["messages"][1]["content"]
    assert "has no attribute 'atn'" in user and "self.atn(" in user
    # repairing back to exactly the parent is refused: the repair must keep the idea
    assert isinstance(out, InvalidEdit) and "reverts to the parent" in out.reason


def test_cost_ceiling_and_missing_key_stop_the_run(monkeypatch):
    proposer = build_proposer({"model": "gpt-4o"}, None, cost_ceiling_usd=0.0)
    with pytest.raises(CostCeilingReached):
        proposer.propose(make_ctx())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingAPIKey, match="OPENAI_API_KEY"):
        build_proposer({"model": "gpt-4o"}, None, cost_ceiling_usd=None).propose(make_ctx())


# -- personas ----------------------------------------------------------------------


def test_personas_from_front_matter_dict():
    cfg = {
        "model": "openai/default",
        "title": "ignored: belongs to the population",
        "personas": {
            "architect": {"model": "anthropic/claude-x", "brief": "Try attention variants.", "edit_format": "whole_file"},
            "data-nerd": {"brief": "Change how batches are formed.", "prefers": "best", "weight": 0.5},
            "bug-hunter": {"enabled": False},
        },
    }
    p = load_personas(cfg)
    assert set(p) == {"architect", "optimizer-tuner", "data-nerd"}
    assert p["architect"].model == "anthropic/claude-x" and p["architect"].brief == "Try attention variants."
    assert p["architect"].crossover and p["architect"].prefers == "frontier"
    assert p["optimizer-tuner"].model == "openai/default"
    assert p["data-nerd"].model == "openai/default" and p["data-nerd"].weight == 0.5
    assert not needs_embedded_model(cfg) and needs_embedded_model({})


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"personas": {"architect": {"modle": "x"}}}, "unknown key personas.architect.modle"),
        ({"personas": {"architect": {"edit_format": "diff"}}}, "edit_format must be one of"),
        ({"personas": {"architect": {"temperature": "hot"}}}, "temperature must be int"),
        ({"personas": {"newbie": {"model": "x"}}}, "needs a brief"),
        ({"personas": {"architect": {"max_tokens": 0}}}, "must be positive"),
        ({"personas": {n: {"enabled": False} for n in DEFAULT_PERSONAS}}, "every persona is disabled"),
        ({"personas": []}, "must be a table"),
    ],
)
def test_bad_persona_settings_are_one_line_errors(cfg, match):
    with pytest.raises(PersonaConfigError, match=match):
        load_personas(cfg)


def test_persona_without_model_needs_the_embedded_model():
    with pytest.raises(PersonaConfigError, match="EmbeddedModel"):
        build_proposer({}, None, None)


# -- prompts -----------------------------------------------------------------------


def test_prompt_is_trimmed_history_first_code_last():
    many = [ArchiveRow(f"c{i}", f"{i:040d}", "architect", f"idea number {i} " * 5, 1.9 + i / 1000, 0.01, 300, 2) for i in range(200)]
    tried = [f"tried idea {i} " * 4 for i in range(300)]
    ctx = make_ctx(archive=many, tried=tried)
    persona = load_personas({"model": "openai/x"})["optimizer-tuner"]
    roomy = build_prompt(ctx, persona, context_window=200_000)
    assert roomy.dropped == () and "idea number 199" in roomy.messages[1]["content"]
    tight = build_prompt(ctx, persona, context_window=6000, max_tokens=1000)
    assert tight.est_tokens <= 5000
    assert any(d.startswith("ideas tried") for d in tight.dropped)
    user = tight.messages[1]["content"]
    assert "def build_model" in user and "if __name__" in user  # the code survived whole
    assert estimate_tokens(tight.messages[0]["content"] + user) <= 5000


def test_knob_prompt_lists_constants_not_the_whole_file():
    persona = load_personas({"model": "openai/x"})["architect"]
    p = build_prompt(make_ctx("architect"), persona, edit_format="knobs", context_window=8192, max_tokens=256)
    user = p.messages[1]["content"]
    assert "| MODEL_DIM | `256 if ON_GPU else 128` | residual stream width |" in user
    assert "class GPT" not in user and p.est_tokens < 2000
