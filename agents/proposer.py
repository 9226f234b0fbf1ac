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
crossover contexts are handled by agents.crossover, not here (`gate`, the novelty gate
and the caller's checks, is shared with it).
"""

from __future__ import annotations

import difflib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from agents import constants, moves, novelty
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
from agents.novelty import Refusal
from agents.personas import RANDOM_MODEL, Persona, PersonaConfigError
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


Check = Callable[[ProposalContext, Proposal], "Refusal | None"]
RANDOM_DRAWS = 20


def gate(ctx: ProposalContext, proposal: Proposal, checks: Sequence[Check] = ()) -> Refusal | None:
    """The checks a valid child passes before it may reach the arena: novelty against
    the run's programs (`ctx.novelty`), then `checks` in order (e.g. arena.preflight's
    one-step run). The first refusal, or None."""
    refusal = novelty.check(proposal.train_py, ctx.novelty)
    for check in checks:
        if refusal is not None:
            break
        refusal = check(ctx, proposal)
    return refusal


def refused(proposal: Proposal, refusal: Refusal, refusals: Sequence[Refusal], raw_reply: str = "") -> InvalidEdit:
    """A child the gate refused, as the InvalidEdit the loop records (`refusals` ends with `refusal`)."""
    return InvalidEdit(proposal.parent_commit, proposal.persona, proposal.model,
                       f"refused before the arena ({refusal.kind}): {refusal.reason}", raw_reply,
                       proposal.hypothesis, tuple(refusals))


class LLMProposer:
    """Proposes children with LLM personas. `personas` maps names to configured
    personas (each with a model); `client` does the calls and the accounting.
    `checks` run on every valid child after the novelty gate (e.g. arena.preflight's
    one-step run); a refusal goes back to the model as a repair request, at most
    `max_gate_repairs` times, and travels with the answer in `refusals`."""

    def __init__(self, personas: dict[str, Persona], client: LLMClient, max_repairs: int = 1,
                 checks: Sequence[Check] = (), max_gate_repairs: int = 2) -> None:
        missing = [n for n, p in personas.items() if not p.model]
        if missing:
            raise PersonaConfigError(
                f"persona(s) {', '.join(missing)} have no model: set `model` in program.md "
                "or start the embedded model (agents.local_model.EmbeddedModel)"
            )
        self.personas = personas
        self.client = client
        self.max_repairs = max_repairs
        self.checks = tuple(checks)
        self.max_gate_repairs = max_gate_repairs

    # -- the protocol ---------------------------------------------------------------

    def propose(self, ctx: ProposalContext) -> Proposal | InvalidEdit:
        persona = self.personas.get(ctx.persona)
        if persona is None:
            raise PersonaConfigError(
                f"unknown persona {ctx.persona!r}; configured: {', '.join(sorted(self.personas))}"
            )
        if persona.model == RANDOM_MODEL:
            return self._random(ctx, persona)
        model = persona.model or ""
        fmt = persona.edit_format
        base = self._base_text(ctx)
        try:
            prompt = build_prompt(ctx, persona, fmt)
        except EditError as e:
            return InvalidEdit(ctx.parent_commit, persona.name, model, f"cannot build the prompt: {e}")
        try:
            reply = self._call(persona, prompt.messages, fmt, base, ctx.novelty)
        except LLMCallFailed as e:
            return InvalidEdit(ctx.parent_commit, persona.name, model, f"llm call failed: {e}")
        refusals: list[Refusal] = []
        repairs = gate_repairs = 0
        first_error = ""
        while True:
            result = self.edit_from_reply(ctx, persona, fmt, reply)
            if isinstance(result, Proposal):
                refusal = self._gate(ctx, result)
                if refusal is None:
                    return replace(result, refusals=tuple(refusals))
                refusals.append(refusal)
                result = refused(result, refusal, refusals, reply[:20000])
                if gate_repairs >= self.max_gate_repairs:
                    return result
                gate_repairs += 1
                feedback = f"Your proposal was refused before any training: {refusal.reason}"
            else:
                result = replace(result, refusals=tuple(refusals))
                if not self._repairable(result, fmt) or repairs >= self.max_repairs:
                    if repairs and first_error:
                        result = replace(result, reason=f"{result.reason} (after one repair; first error: "
                                                        f"{first_error})")
                    return result
                repairs += 1
                first_error = first_error or result.reason
                feedback = f"Your edit could not be applied: {result.reason}"
            log.info("%s: repair round trip: %s", persona.name, result.reason)
            try:
                reply = self._call(persona, repair_messages(prompt, reply, feedback, fmt), fmt, base, ctx.novelty)
            except LLMCallFailed as e:
                return replace(result, reason=f"{result.reason}; repair call failed: {e}")

    def _gate(self, ctx: ProposalContext, proposal: Proposal) -> Refusal | None:
        return gate(ctx, proposal, self.checks)

    def _random(self, ctx: ProposalContext, persona: Persona) -> Proposal | InvalidEdit:
        """The random-mutation baseline: a random move of the menu, no LLM; a move the
        gates refuse is replaced by another draw (at most `RANDOM_DRAWS`)."""
        base = self._base_text(ctx)
        known = len(ctx.novelty) if ctx.novelty is not None else 0
        rng = random.Random(f"{ctx.parent_commit}:{persona.name}:{len(ctx.tried)}:{known}:{ctx.repair_of}")
        refusals: list[Refusal] = []
        reason = "no move of the menu applies"
        for _ in range(RANDOM_DRAWS):
            try:
                move = moves.random_move(base, rng)
                child = moves.apply(base, move)
                validate_train_py(base, child)
            except EditError as e:
                reason = str(e)
                continue
            proposal = Proposal(ctx.parent_commit, persona.name, RANDOM_MODEL,
                                f"{moves.describe(base, move)} (random move)", child, "moves")
            refusal = self._gate(ctx, proposal)
            if refusal is None:
                return replace(proposal, refusals=tuple(refusals))
            refusals.append(refusal)
            reason = f"refused before the arena ({refusal.kind}): {refusal.reason}"
        return InvalidEdit(ctx.parent_commit, persona.name, RANDOM_MODEL, f"no new random move: {reason}",
                           refusals=tuple(refusals))

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
                broken = constants.violations(child)
                if broken:
                    raise EditError("the change breaks a constraint: " + "; ".join(broken[:3]), hypothesis=hypothesis)
                used = "knobs"
            elif fmt == "moves":
                move, why = moves.parse_reply(reply)
                hypothesis = why
                child = moves.apply(base, move)
                hypothesis = f"{moves.describe(base, move)}: {why}" if why else moves.describe(base, move)
                used = "moves"
            elif fmt == "whole_file":
                hypothesis = extract_hypothesis(reply)
                child = parse_whole_file(reply)
                used = "whole_file"
            else:
                hypothesis = extract_hypothesis(reply)
                try:
                    blocks = parse_search_replace(reply)
                except EditError as no_blocks:
                    if not no_blocks.no_blocks or "```" not in reply:
                        raise
                    child = parse_whole_file(reply)  # whole-file fallback
                    used = "whole_file"
                else:
                    child = apply_search_replace(base, blocks)
                    used = "search_replace"
            validate_train_py(base, child)
        except EditError as e:
            hypothesis = hypothesis or e.hypothesis
            return InvalidEdit(ctx.parent_commit, persona.name, model, str(e), reply[:20000], hypothesis,
                               unmatched_block=e.unmatched_block)
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
    def _repairable(result: InvalidEdit, fmt: str) -> bool:
        """Worth one repair round trip: a SEARCH part that did not match, or (JSON formats,
        whose replies a grammar keeps well-formed) a value the file refuses."""
        return fmt in ("knobs", "moves") or result.unmatched_block is not None

    def _call(self, persona: Persona, messages: list[dict[str, str]], fmt: str, base: str,
              known: novelty.NoveltyIndex | None = None) -> str:
        response_format = None
        if fmt in ("moves", "knobs"):
            try:
                schema = moves.schema(base, known) if fmt == "moves" else knob_schema(find_knobs(base))
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
