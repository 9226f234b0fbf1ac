"""The proposers: LLM personas that read the parent and its history and propose a child.

Flow: program.md + archive -> **agents** (persona, prompt, LLM call, edit, validation)
-> `Proposal` or `InvalidEdit` -> the population loop -> arena. Modules:

- `proposal`: the records (shared with the loop), `personas`: who proposes what,
- `prompts`: prompt assembly and trimming, `edits`: edit formats and validation,
- `llm`: litellm access (retries, cost, ceiling, call records), `proposer`: `LLMProposer`,
- `crossover`: merging two archive members, `local_model`: the embedded llama.cpp model,
- `moves`: the typed mutation menu (small models, the random baseline), `constants`:
  constant values and the constraints between them, `novelty`: the repeat gate,
  `rubric`: whether a hypothesis matches its edit.

The package never commits to git, runs candidates or scores them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agents.llm import LLMCallRecord, LLMClient
from agents.personas import PersonaConfigError, load_personas, with_model
from agents.proposal import InvalidEdit, Proposal, ProposalContext, Proposer
from agents.proposer import LLMProposer


def needs_embedded_model(personas_config: dict | None) -> bool:
    """True when some enabled persona has no model configured: the caller must start
    `agents.local_model.EmbeddedModel` and pass it to `build_proposer`."""
    return any(p.model is None for p in load_personas(personas_config).values())


def build_proposer(
    personas_config: dict | None,
    on_llm_call: Callable[[LLMCallRecord], None] | None,
    cost_ceiling_usd: float | None,
    *,
    embedded: object | None = None,
    spent_usd: float = 0.0,
    max_retries: int = 4,
    checks: Sequence[Callable] = (),
) -> LLMProposer:
    """The proposer the population loop uses.

    `personas_config`: program.md's front matter as a dict (see agents.personas).
    `on_llm_call`: called with an `LLMCallRecord` for every attempt, for the store.
    `cost_ceiling_usd`: stop (CostCeilingReached) once the run has spent this; None: no ceiling.
    `embedded`: a started `EmbeddedModel` (or anything with `model`, `api_base` and
    `context_window`) serving personas that have no model of their own.
    `spent_usd`: what a resumed run already spent.
    `checks`: run on every valid child after the novelty gate, each returning an
    `agents.novelty.Refusal` or None (e.g. `arena.preflight.Preflight`).
    Raises PersonaConfigError on bad settings or a persona without any model."""
    personas = load_personas(personas_config)
    if embedded is not None:
        personas = with_model(
            personas,
            model=embedded.model,  # type: ignore[attr-defined]
            api_base=embedded.api_base,  # type: ignore[attr-defined]
            context_window=getattr(embedded, "context_window", None),
        )
    client = LLMClient(on_llm_call=on_llm_call, cost_ceiling_usd=cost_ceiling_usd, spent_usd=spent_usd, max_retries=max_retries)
    return LLMProposer(personas, client, checks=checks)


__all__ = [
    "InvalidEdit",
    "LLMCallRecord",
    "LLMProposer",
    "PersonaConfigError",
    "Proposal",
    "ProposalContext",
    "Proposer",
    "build_proposer",
    "needs_embedded_model",
]
