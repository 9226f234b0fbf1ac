"""The LLM proposer: context -> prompt -> reply -> edit -> validated Proposal.

`LLMProposer` implements the `Proposer` protocol of agents.proposal for the population
loop. For one `ProposalContext` it builds the persona's prompt (agents.prompts), calls
its model through `LLMClient` (agents.llm), turns the reply into a new train.py with
the persona's edit format (agents.edits) and validates it. A SEARCH/REPLACE block that
does not match gets one repair round trip quoting the error back to the model. A reply
that cannot be used becomes an `InvalidEdit` with a one-line reason; this never raises
on a malformed reply. It raises only what should stop the run: `MissingAPIKey`,
`LLMConfigError`, `CostCeilingReached` and `PersonaConfigError`.

It does not pick parents or personas, commit to git, or run guards (the arena does);
crossover contexts are handled by agents.crossover, not here.
"""

from __future__ import annotations

import difflib
import logging

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
from agents.llm import LLMCallFailed, LLMClient, is_local_base, supports_json_mode
from agents.personas import Persona, PersonaConfigError
from agents.prompts import Prompt, build_prompt, repair_messages
from agents.proposal import InvalidEdit, Proposal, ProposalContext

log = logging.getLogger(__name__)


def _fallback_hypothesis(parent: str, child: str) -> str:
    changed = [
        ln[1:].strip()
        for ln in difflib.unified_diff(parent.splitlines(), child.splitlines(), lineterm="", n=0)
        if ln.startswith("+") and not ln.startswith("+++") and ln[1:].strip()
    ]
    first = changed[0][:80] if changed else ""
    return f"(no hypothesis stated) {len(changed)} line(s) changed, first: {first}"


class LLMProposer:
    """Proposes children with LLM personas. `personas` maps names to configured
    personas (each with a model); `client` does the calls and the accounting."""

    def __init__(self, personas: dict[str, Persona], client: LLMClient, max_repairs: int = 1) -> None:
        missing = [n for n, p in personas.items() if not p.model]
        if missing:
            raise PersonaConfigError(
                f"persona(s) {', '.join(missing)} have no model: set `model` in program.md "
                "or start the embedded model (agents.local_model.EmbeddedModel)"
            )
        self.personas = personas
        self.client = client
        self.max_repairs = max_repairs

    # -- the protocol ---------------------------------------------------------------

    def propose(self, ctx: ProposalContext) -> Proposal | InvalidEdit:
        persona = self.personas.get(ctx.persona)
        if persona is None:
            raise PersonaConfigError(
                f"unknown persona {ctx.persona!r}; configured: {', '.join(sorted(self.personas))}"
            )
        model = persona.model or ""
        fmt = persona.edit_format
        base = self._base_text(ctx)
        try:
            prompt = build_prompt(ctx, persona, fmt)
        except EditError as e:
            return InvalidEdit(ctx.parent_commit, persona.name, model, f"cannot build the prompt: {e}")
        try:
            reply = self._call(persona, prompt.messages, fmt, base)
        except LLMCallFailed as e:
            return InvalidEdit(ctx.parent_commit, persona.name, model, f"llm call failed: {e}")
        result = self.edit_from_reply(ctx, persona, fmt, reply)
        repairs = 0
        while (
            isinstance(result, InvalidEdit)
            and fmt == "search_replace"
            and repairs < self.max_repairs
            and self._repairable(result)
        ):
            repairs += 1
            log.info("%s: repair round trip %d: %s", persona.name, repairs, result.reason)
            try:
                reply2 = self._call(persona, repair_messages(prompt, reply, result.reason), fmt, base)
            except LLMCallFailed as e:
                return InvalidEdit(
                    ctx.parent_commit, persona.name, model,
                    f"{result.reason}; repair call failed: {e}", reply, result.hypothesis,
                )  # fmt: skip
            second = self.edit_from_reply(ctx, persona, fmt, reply2)
            if isinstance(second, InvalidEdit):
                second = InvalidEdit(
                    ctx.parent_commit, persona.name, model,
                    f"{second.reason} (after one repair; first error: {result.reason})",
                    reply2, second.hypothesis or result.hypothesis,
                )  # fmt: skip
            result, reply = second, reply2
        return result

    # -- pieces, public so that tests and benchmarks can drive them directly ----------

    def edit_from_reply(
        self, ctx: ProposalContext, persona: Persona, fmt: str, reply: str
    ) -> Proposal | InvalidEdit:
        """Turn one reply into a validated Proposal, or an InvalidEdit with the reason."""
        model = persona.model or ""
        base = self._base_text(ctx)
        hypothesis = ""
        try:
            if fmt == "knobs":
                hypothesis, changes = parse_knob_reply(reply)
                child = apply_knobs(base, changes)
                used = "knobs"
            elif fmt == "whole_file":
                hypothesis = extract_hypothesis(reply)
                child = parse_whole_file(reply)
                used = "whole_file"
            else:
                hypothesis = extract_hypothesis(reply)
                try:
                    blocks = parse_search_replace(reply)
                except EditError as no_blocks:
                    if "no <<<<<<< SEARCH" not in str(no_blocks) or "```" not in reply:
                        raise
                    child = parse_whole_file(reply)  # whole-file fallback
                    used = "whole_file"
                else:
                    child = apply_search_replace(base, blocks)
                    used = "search_replace"
            validate_train_py(base, child)
        except EditError as e:
            hypothesis = hypothesis or e.hypothesis
            return InvalidEdit(ctx.parent_commit, persona.name, model, str(e), reply[:20000], hypothesis)
        except Exception as e:  # a bug in parsing must not lose the reply or stop the run
            log.exception("unexpected error while parsing a reply from %s", model)
            return InvalidEdit(
                ctx.parent_commit, persona.name, model,
                f"internal error while parsing the reply: {type(e).__name__}: {e}", reply[:20000], hypothesis,
            )  # fmt: skip
        if ctx.repair_of is not None and ctx.repair_train_py and child == ctx.parent_train_py:
            return InvalidEdit(ctx.parent_commit, persona.name, model, "the repair reverts to the parent", reply[:20000], hypothesis)
        return Proposal(
            parent_commit=ctx.parent_commit,
            persona=persona.name,
            model=model,
            hypothesis=hypothesis or _fallback_hypothesis(base, child),
            train_py=child,
            edit_format=used,
        )

    @staticmethod
    def _base_text(ctx: ProposalContext) -> str:
        """The file the edit applies to: the broken candidate when repairing, else the parent."""
        return ctx.repair_train_py if (ctx.repair_of is not None and ctx.repair_train_py) else ctx.parent_train_py

    @staticmethod
    def _repairable(result: InvalidEdit) -> bool:
        r = result.reason
        return ("does not match" in r) or ("matches " in r and " places in " in r)

    def _call(self, persona: Persona, messages: list[dict[str, str]], fmt: str, base: str) -> str:
        response_format = None
        if fmt == "knobs":
            try:
                schema = knob_schema(find_knobs(base))
            except EditError:
                schema = None
            if schema is not None and is_local_base(persona.api_base):
                # llama.cpp turns the schema into a grammar: the reply is always valid JSON
                response_format = {"type": "json_object", "schema": schema}
            elif supports_json_mode(persona.model or ""):
                response_format = {"type": "json_object"}
        reply = self.client.complete(
            persona=persona.name,
            model=persona.model or "",
            messages=messages,
            api_base=persona.api_base,
            api_key_env=persona.api_key_env,
            temperature=persona.temperature,
            max_tokens=persona.max_tokens,
            timeout_s=persona.timeout_s,
            response_format=response_format,
        )
        return reply.text


__all__ = ["LLMProposer", "Prompt"]
