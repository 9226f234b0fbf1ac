"""Planning: who the next children are and what each one sees.

Flow: for child (g, idx) the loop asks `plan` for a persona (the bandit, from the
archive version the child sees), a parent (population.selection: Thompson sampling for
personas that prefer the best, a diversity draw otherwise), sometimes a second parent
(crossover) or a failed candidate to repair; then, once the proposals planned before it
with the same parent have answered, `build_context` assembles the `ProposalContext` the
proposer gets: program.md's prose, the parent's code and lineage, the archive, recent
failures, what siblings already tried, the noise floor. Every draw is seeded by (run
seed, generation, child index) and everything read comes from finished archive versions,
so a resumed run plans and shows the same.

What it does not do: call a proposer, write git commits or decide anything about
measurements (population.scoring and population.decisions do).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from agents.novelty import NoveltyIndex
from agents.proposal import ArchiveRow, Failure, LineageStep, ProposalContext
from arena.records import FAILURES, Status
from population import memory, telemetry
from population.archive import Point
from population.bandit import PersonaStats, choose_persona
from population.program import ProgramConfig
from population.scoring import ROOT_ID
from population.selection import select_for
from population.state import RunState
from population.store import Candidate


class Planner:
    """`personas` the bandit chooses among, `preferences` their parent preference ("best",
    "frontier", "failed"), `crossover_personas` those that sometimes merge two members;
    `read_train_py(commit)` reads a file from the run's repository, `lineage(commit)`
    its ancestry (for crossover pairs)."""

    def __init__(self, state: RunState, cfg: ProgramConfig, personas: list[str], preferences: dict[str, str],
                 crossover_personas: set[str], lookahead: int, read_train_py: Callable[[str], str],
                 lineage: Callable[[str], Any] | None = None, weights: dict[str, float] | None = None):
        self.state, self.cfg = state, cfg
        self.weights = weights or {}
        self.personas = personas
        self.preferences = preferences
        self.crossover_personas = crossover_personas
        self.lookahead = lookahead
        self.read_train_py = read_train_py
        self.lineage = lineage

    def sees(self, g: int, idx: int) -> int:
        """The archive version child (g, idx) is planned from: the first `lookahead`
        children of a generation one version early, so that they are proposed and run
        while the generation before still runs; generation 1's then see version -1 (the
        root, not measured yet: they run beside the root's noise-floor runs)."""
        return g - 2 if (g >= 1 and idx < self.lookahead) else g - 1

    def plan(self, g: int, upto: int) -> None:
        """Add children 0..upto-1 of generation g that do not exist yet."""
        st = self.state
        for idx in range(upto):
            cid = f"g{g:03d}c{idx:02d}"
            if cid in st.cands:
                continue
            v = self.sees(g, idx)
            persona = choose_persona(self.persona_stats(v), random.Random(f"{self.cfg.seed}:persona:{g}:{idx}"),
                                     self.cfg.bandit_floor, weights=self.weights)
            rng = random.Random(f"{self.cfg.seed}:parent:{g}:{idx}")
            prefers = self.preferences.get(persona, "frontier")
            second: str | None = None
            repair: str | None = None
            if v < 0:  # before the root is measured it is the only parent: no pair, nothing to repair
                parent_id = ROOT_ID
            else:
                members = [Point.from_row(r) for r in st.generation(v).archive]
                ref = tuple(st.meta("reference"))
                parent_id = select_for(prefers, members, ref, rng, self.cfg.parent_floor).candidate_id  # type: ignore[arg-type]
                if persona in self.crossover_personas and rng.random() < self.cfg.crossover_rate:
                    pair = self._pick_pair(v, rng)
                    if pair is not None:
                        parent_id, second = pair
                elif prefers == "failed":
                    repair = self.repair_target(v)
                    if repair is not None:
                        parent_id = st.cands[repair].parent_id or ROOT_ID
            st.add_candidate(Candidate(
                id=cid, generation=g, idx=idx, parent_id=parent_id, persona=persona, status=Status.PROPOSED,
                archive_version=v, second_parent_id=second, repair_of=repair,
            ))

    def _pick_pair(self, v: int, rng: random.Random) -> tuple[str, str] | None:
        """Two archive members of version v that share an ancestor (agents.crossover)."""
        from agents.crossover import pick_pair

        rows = self.archive_rows(v)
        by_commit = {r.commit: r.candidate_id for r in rows}
        pair = pick_pair(rows, self.lineage, rng)  # type: ignore[arg-type]
        if pair is None:
            return None
        return by_commit[pair.first.commit], by_commit[pair.second.commit]

    def repair_target(self, v: int) -> str | None:
        """The newest failed candidate (as of version v) with a commit that no earlier
        child was asked to repair and that is not a duplicate of an earlier one."""
        st = self.state
        statuses = st.generation(v).statuses
        taken = {c.repair_of for c in st.cands.values() if c.repair_of}
        owners = st.known_diffs()
        for c in reversed(st.in_plan_order()):
            s = statuses.get(c.id)
            duplicate = bool(c.diff_hash) and owners.get(c.diff_hash, c.id) != c.id
            if s is not None and Status(s) in FAILURES and c.commit and c.id not in taken and not duplicate:
                return c.id
        return None

    def persona_stats(self, v: int) -> dict[str, PersonaStats]:
        st = self.state
        statuses = st.generation(v).statuses if v >= 0 else {}
        costs = st.store.cost_by_candidate()
        acc = {p: [0, 0, 0.0] for p in self.personas}
        for cid, s in statuses.items():
            c = st.cands.get(cid)
            if c is None or c.persona not in acc or cid == ROOT_ID:
                continue
            status = Status(s)
            if status in FAILURES or status in (Status.CONFIRMED, Status.REJECTED):
                acc[c.persona][0] += 1
                acc[c.persona][1] += int(status == Status.CONFIRMED)
                acc[c.persona][2] += costs.get(cid, 0.0)
        return {p: PersonaStats(int(t), int(s), float(cost)) for p, (t, s, cost) in acc.items()}

    # -- what a child sees ------------------------------------------------------------------------

    def tried(self, c: Candidate) -> list[str] | None:
        """Hypotheses of candidates with the same parent planned before c; None while one
        of them is still being proposed (c waits, so its context is deterministic)."""
        out = []
        for o in self.state.in_plan_order():
            if (o.generation, o.idx) >= (c.generation, c.idx) or o.parent_id != c.parent_id or o.id == ROOT_ID:
                continue
            if o.status == Status.PROPOSED and o.commit is None:
                return None
            if o.hypothesis:
                out.append(o.hypothesis)
        return out

    def build_context(self, c: Candidate, tried: list[str]) -> ProposalContext:
        """Everything child `c` is shown, as of the archive version it saw. The one place
        that assembles a proposal's context: new kinds of context are added here."""
        st = self.state
        v = c.archive_version
        rec = st.generation(v) if v >= 0 else None  # None: before the root is measured (nothing is)
        sc = st.scorer()
        parent = st.cands[c.parent_id or ROOT_ID]
        chain: list[Candidate] = []
        cur: Candidate | None = parent
        while cur is not None:
            chain.append(cur)
            cur = st.cands.get(cur.parent_id) if cur.parent_id else None
        lineage = []
        for a in reversed(chain):
            p = sc.score(a.id, v) if rec else None
            delta = sc.gain(a.id, sc.model(v), v).mean if rec and a.parent_id and sc.pairs(a.id, v) else None
            lineage.append(LineageStep(
                commit=a.commit or "", persona=a.persona, hypothesis=a.hypothesis,
                val_bpb=p.val_bpb if p else None, val_bpb_std=p.val_bpb_std if p else None,
                delta_vs_parent=delta,
                status=rec.statuses.get(a.id, a.status.value) if rec else Status.PROPOSED.value,
            ))
        failures = []
        for o in reversed(st.in_plan_order() if rec else []):
            s = rec.statuses.get(o.id)
            if s is not None and Status(s) in FAILURES:
                failures.append(Failure(o.id, o.persona, o.hypothesis, s, o.message[-2000:]))
            if len(failures) >= 8:
                break
        floor = st.floor() if rec else None
        repair_of = repair_py = None
        if c.repair_of is not None:
            f = st.cands[c.repair_of]
            repair_of = Failure(f.id, f.persona, f.hypothesis, rec.statuses.get(f.id, f.status.value), f.message[-2000:])
            repair_py = self.read_train_py(f.commit or "")
        second = st.cands[c.second_parent_id] if c.second_parent_id else None
        parent_runs = telemetry.candidate_telemetry(st.store, parent.id, self.cfg.budget_s, as_of=v) if rec else None
        return ProposalContext(
            persona=c.persona, program=self.cfg.prose, parent_id=parent.id,
            parent_commit=parent.commit or "", parent_train_py=self.read_train_py(parent.commit or ""),
            lineage=lineage, archive=self.archive_rows(v), failures=failures, tried=tried,
            noise_floor=floor.val_std if floor else None, repair_of=repair_of, repair_train_py=repair_py,
            second_parent_commit=second.commit if second else None,
            second_parent_train_py=self.read_train_py(second.commit or "") if second else None,
            memory=memory.digest(st.store, self.read_train_py, parent.id, as_of=v) if rec else "",
            telemetry=telemetry.render(parent_runs) if parent_runs else "",
            novelty=self.novelty_index(c),
        )

    def novelty_index(self, c: Candidate) -> NoveltyIndex:
        """The programs child `c` may not repeat, as of the archive version it saw: every
        candidate of a generation up to that version (with its status then), and the
        siblings planned before it (`tried` makes c wait for them; "queued"). Candidates
        proposed meanwhile are not in it (the loop's guard refuses a duplicate of them)."""
        v = c.archive_version
        statuses = self.state.generation(v).statuses if v >= 0 else {}  # -1: before the root is measured
        programs = []
        for o in self.state.in_plan_order():
            if not o.commit:
                continue
            if o.generation <= v:
                outcome = statuses.get(o.id, "queued")
            elif o.parent_id == c.parent_id and (o.generation, o.idx) < (c.generation, c.idx):
                outcome = "queued"
            else:
                continue
            programs.append((o.id, self.read_train_py(o.commit), outcome))
        return NoveltyIndex.build(programs)

    def archive_rows(self, v: int) -> list[ArchiveRow]:
        rows: list[ArchiveRow] = []
        for r in self.state.generation(v).archive if v >= 0 else []:
            p = Point.from_row(r)
            m = self.state.cands[p.candidate_id]
            rows.append(ArchiveRow(m.id, m.commit or "", m.persona, m.hypothesis, p.val_bpb, p.val_bpb_std,
                                   p.peak_mem_mb, p.n_seeds))
        return rows
