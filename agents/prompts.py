"""Prompt assembly: from a `ProposalContext` and a persona to chat messages.

agents.proposer calls `build_prompt`; what goes in: program.md's prose, the persona's
brief and what it should touch, the parent's train.py, the parent's lineage (each
step's hypothesis and measured change with its uncertainty), the archive as a table,
recent failures and refusals with their reasons, ideas already tried, and the answer
format of the edit format. The prompt is trimmed to the model's context window using
a character-based token estimate: ideas tried, archive rows, failures and lineage
steps go first (least useful first), then program prose; the code goes last. With
the knob format the prompt lists the constants (name, value, comment) instead of the
whole file: a small model can only change constants, and on CPU every prompt token
costs time; with the move format it lists the typed menu (agents.moves) instead.
The research memory (what the whole run tried and measured, population.memory) and
the parent's training telemetry (population.telemetry) go into every prompt; memory
lines are dropped from the end (least relevant last) when the window is tight.

It does not call models, parse replies or decide which persona runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents import moves
from agents.edits import EditError, Knob, find_knobs
from agents.personas import Persona
from agents.proposal import ArchiveRow, Failure, LineageStep, ProposalContext

CHARS_PER_TOKEN = 3.2  # conservative for code and English with BPE tokenizers
DEFAULT_CONTEXT_WINDOW = 8192


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    est_tokens: int
    dropped: tuple[str, ...]  # what trimming removed, e.g. ("archive: 3 rows",)


FORMAT_INSTRUCTIONS = {
    "search_replace": """\
Answer in this format and nothing else:

HYPOTHESIS: <one sentence: what you change (name the constants or functions) and why it should lower val_bpb>

train.py
<<<<<<< SEARCH
<lines copied exactly from the current train.py>
=======
<the new lines>
>>>>>>> REPLACE

Use one or more blocks. Each SEARCH part must match exactly one place in train.py; copy
enough lines to make it unique. Edit only train.py.""",
    "whole_file": """\
Answer in this format and nothing else:

HYPOTHESIS: <one sentence: what you change (name the constants or functions) and why it should lower val_bpb>

```python
<the complete new train.py>
```""",
    "knobs": """\
Answer with one JSON object and nothing else:
{"hypothesis": "<one sentence: which constants you change, which way, and why it should lower val_bpb>",
 "changes": [{"name": "<CONSTANT_NAME>", "value": <new value>}]}
Change 1 to 3 of the constants in the table, by name (usually one). A value replaces the whole
expression after the equals sign. Numbers stay numbers; strings stay strings.
The hypothesis names every constant you change and says which way it moves.""",
    "moves": """\
Answer with one JSON object and nothing else:
{"move": <exactly one move from the menu>,
 "reason": "<one sentence: why this move should lower val_bpb; name the constant you change>"}
Pick a move that the research memory does not show as already tried and worse.""",
}

RULES = """\
Rules:
- Make one change that tests one hypothesis; do not repeat an idea already tried.
- train.py must keep a module-level build_model(**build_kwargs), train only under
  `if __name__ == "__main__":`, read budget, seed and device only through prepare.py,
  and call prepare.save_for_eval. Never edit prepare.py. The model must stay causal.
- Training runs for a fixed time budget; a model that is slower per step sees fewer tokens.
- The score is val_bpb (lower is better), measured by the arena, not by train.py."""


KNOB_RULES = """\
Rules:
- Make one change that tests one hypothesis; do not repeat an idea already tried.
- Training runs for a fixed time budget on this device; a slower step means fewer tokens seen.
- The score is val_bpb (lower is better)."""


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _one_line(s: str, n: int = 160) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _render_lineage(steps: list[tuple[int, LineageStep]], noise: float | None) -> str:
    head = "| step | persona | hypothesis | val_bpb ± std | change vs its parent | status |\n|---|---|---|---|---|---|"
    rows = []
    for i, s in steps:
        delta = "-" if s.delta_vs_parent is None else f"{s.delta_vs_parent:+.4f}"
        rows.append(
            f"| {i} | {s.persona} | {_one_line(s.hypothesis, 120)} | {_fmt(s.val_bpb)} ± {_fmt(s.val_bpb_std)} "
            f"| {delta} | {s.status} |"
        )
    note = ""
    if noise is not None:
        note = (
            f"\nNoise floor: val_bpb varies by about {noise:.4f} (std) across seeds; "
            f"a change smaller than about {2 * noise:.4f} is indistinguishable from noise."
        )
    return head + "\n" + "\n".join(rows) + note


def _render_archive(rows: list[ArchiveRow]) -> str:
    head = "| candidate | persona | hypothesis | val_bpb ± std | peak mem MB | seeds |\n|---|---|---|---|---|---|"
    body = [
        f"| {r.candidate_id} | {r.persona} | {_one_line(r.hypothesis, 100)} | {_fmt(r.val_bpb)} ± {_fmt(r.val_bpb_std)} "
        f"| {r.peak_mem_mb:.0f} | {r.n_seeds} |"
        for r in rows
    ]
    return head + "\n" + "\n".join(body)


def _render_failures(fails: list[Failure]) -> str:
    return "\n".join(
        f"- {f.candidate_id} ({f.persona}) {f.status}: {_one_line(f.hypothesis, 100)} -- reason: {_one_line(f.message, 240)}"
        for f in fails
    )


def _render_knobs(knobs: dict[str, Knob]) -> str:
    lines = ["| constant | current value | note |", "|---|---|---|"]
    for k in knobs.values():
        lines.append(f"| {k.name} | `{_one_line(k.source, 60)}` | {_one_line(k.comment, 80)} |")
    return "\n".join(lines)


def context_window_for(persona: Persona) -> int:
    """The persona's context window: configured, else litellm's model info, else 8192."""
    if persona.context_window:
        return persona.context_window
    if persona.model:
        from agents.llm import _litellm

        try:
            info = _litellm().get_model_info(persona.model)
            n = info.get("max_input_tokens") or info.get("max_tokens")
            if n:
                return int(n)
        except Exception:  # litellm raises a plain Exception for unmapped models
            pass
    return DEFAULT_CONTEXT_WINDOW


def build_prompt(
    ctx: ProposalContext,
    persona: Persona,
    edit_format: str | None = None,
    context_window: int | None = None,
    max_tokens: int | None = None,
) -> Prompt:
    """Chat messages for one proposal, trimmed to fit `context_window - max_tokens`."""
    fmt = edit_format or persona.edit_format
    window = context_window or context_window_for(persona)
    reply_budget = max_tokens or persona.max_tokens
    budget = max(window - reply_budget - 64, 256)

    system = (
        f"You improve a small GPT training script, train.py, to reach a lower validation "
        f"bits-per-byte (val_bpb) within a fixed training-time budget, in the role given "
        f"at the end of the user message.\n\n"
        f"{KNOB_RULES if fmt in ('knobs', 'moves') else RULES}\n\n{FORMAT_INSTRUCTIONS[fmt]}"
    )

    lineage = list(enumerate(ctx.lineage))
    archive = sorted(ctx.archive, key=lambda r: r.val_bpb)
    failures = list(ctx.failures)
    tried = list(ctx.tried)
    memory = [ln for ln in ctx.memory.strip().splitlines() if ln.strip()]
    telemetry = ctx.telemetry.strip()
    program = ctx.program.strip()
    code_src = ctx.repair_train_py if (ctx.repair_of and ctx.repair_train_py) else ctx.parent_train_py
    try:
        knobs = find_knobs(code_src) if fmt == "knobs" else {}
        menu = moves.render_menu(code_src, ctx.novelty) if fmt == "moves" else ""
    except EditError:
        knobs, menu = {}, ""
    code_truncated = False
    dropped: dict[str, int] = {}

    def render() -> str:
        # stable parts first (program, code), the parts that change between calls after,
        # the persona last: a local server reuses the cached prefix of the previous prompt
        parts: list[str] = []
        if program:
            parts.append(f"## Research program (program.md)\n{program}")
        if fmt == "knobs":
            parts.append(f"## Constants of train.py you may change\n{_render_knobs(knobs)}")
        elif fmt == "moves":
            parts.append(f"## Moves you may choose (the menu)\n{menu}")
        else:
            code = code_src
            title = "## The current train.py" if not ctx.repair_of else "## The broken train.py (to repair)"
            if code_truncated:
                code = code[: max(budget_chars_for_code(), 0)] + "\n# ... (truncated to fit the context window)"
            parts.append(f"{title}\n```python\n{code}\n```")
        if lineage:
            parts.append(f"## Lineage of the parent (root first)\n{_render_lineage(lineage, ctx.noise_floor)}")
        elif ctx.noise_floor is not None:
            parts.append(f"## Noise floor\nval_bpb varies by about {ctx.noise_floor:.4f} (std) across seeds.")
        if telemetry:
            parts.append(f"## How the parent trained\n{telemetry}")
        if memory:
            parts.append("## Research memory (what this run tried, measured against each parent)\n"
                         + "\n".join(memory))
        if archive:
            parts.append(f"## Archive (the current Pareto front, best first)\n{_render_archive(archive)}")
        if failures:
            parts.append(f"## Recent failures and refusals (most recent first)\n{_render_failures(failures)}")
        if tried:
            parts.append("## Ideas already tried (do not repeat them)\n" + "\n".join(f"- {_one_line(t)}" for t in tried))
        if ctx.repair_of is not None:
            f = ctx.repair_of
            parts.append(
                f"## Candidate to repair: {f.candidate_id} ({f.status})\nIts hypothesis: {_one_line(f.hypothesis, 300)}\n"
                f"What went wrong:\n```\n{f.message[-3000:]}\n```\nRepair it; the code above is the broken candidate."
            )
        parts.append(f"## Your role: {persona.name}\n{persona.brief}\nYou should touch: {persona.touches}")
        return "\n\n".join(parts)

    def budget_chars_for_code() -> int:
        return int(budget * CHARS_PER_TOKEN * 0.8)

    def total(user: str) -> int:
        return estimate_tokens(system) + estimate_tokens(user) + 16

    user = render()
    # trim least useful first; the code is the last thing to go
    while total(user) > budget:
        if tried:
            tried.pop()  # the loop lists them most recent first: drop from the end
            dropped["ideas tried"] = dropped.get("ideas tried", 0) + 1
        elif len(memory) > 4:
            memory.pop()  # ranked most relevant first
            dropped["memory lines"] = dropped.get("memory lines", 0) + 1
        elif len(archive) > 3:
            archive.pop()  # worst row
            dropped["archive rows"] = dropped.get("archive rows", 0) + 1
        elif len(failures) > 1:
            failures.pop()  # oldest
            dropped["failures"] = dropped.get("failures", 0) + 1
        elif len(lineage) > 1:
            lineage.pop(0)  # oldest step
            dropped["lineage steps"] = dropped.get("lineage steps", 0) + 1
        elif archive or failures or lineage or memory or telemetry:
            archive, failures, lineage, memory, telemetry = [], [], [], [], ""
            dropped["remaining history"] = 1
        elif len(program) > 400:
            program = program[: len(program) // 2].rstrip() + " ..."
            dropped["program prose (halved)"] = dropped.get("program prose (halved)", 0) + 1
        elif not code_truncated:
            code_truncated = True
            dropped["code (truncated)"] = 1
        else:
            break
        user = render()

    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return Prompt(messages, total(user), tuple(f"{k}: {v}" for k, v in dropped.items()))


def repair_messages(prompt: Prompt, reply: str, feedback: str, edit_format: str = "search_replace") -> list[dict[str, str]]:
    """The follow-up turn after a reply that could not be used: `feedback` says why (an
    edit that did not apply, or a refusal before the arena: a repeat, a failed one-step
    run), and the model answers again in the same format."""
    if edit_format in ("knobs", "moves"):
        how = "Answer again with one JSON object in the same format, with a change that avoids this problem."
    elif feedback.startswith("Your edit could not be applied"):
        how = ("Each SEARCH part must be copied exactly from the current train.py shown above. "
               "Send the HYPOTHESIS line and all your blocks again, corrected, in the same format.")
    else:
        how = "Send a corrected proposal (the HYPOTHESIS line and your blocks) in the same format."
    return [
        *prompt.messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": f"{feedback}\n{how}"},
    ]
