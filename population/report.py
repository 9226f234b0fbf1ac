"""Plain-text views of a run's store for `evolve status` and `evolve report`.

Flow: opens nothing itself; reads a `Store` (normally opened read-only, so it never
blocks the running loop) and returns text.

What it does not do: print, or change the store.
"""

from __future__ import annotations

import json
import os
import time

from arena.records import FAILURES, Status
from population.archive import Point
from population.bandit import PersonaStats, choice_probabilities
from population.store import Store


def pid_alive(pid: int) -> bool:
    """Whether the process that wrote a run row still runs (the writer of a live store)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_text(store: Store) -> str:
    cands = store.candidates()
    gens = store.generations()
    sessions = store.sessions()
    evals = store.evaluations(include_unfinished=True)
    running = sum(1 for e in evals if e.status == "running")
    counts: dict[str, int] = {}
    for c in cands:
        counts[c.status.value] = counts.get(c.status.value, 0) + 1
    lines = []
    if sessions:
        last = sessions[-1]
        if last["ended_at"] is not None:
            state = f"stopped ({last['outcome']})"
        else:
            state = "running" if pid_alive(last["pid"]) else "killed (continue with evolve --resume)"
        lines.append(f"session {last['id']} (pid {last['pid']}): {state}")
    lines.append(f"generations finished: {len(gens) - 1 if gens else 0} "
                 f"(archive version {gens[-1].generation if gens else '-'})")
    lines.append(f"candidates: {len(cands)}  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append(f"evaluations: {sum(1 for e in evals if e.finished)} finished, {running} running")
    lines.append(f"LLM cost: {store.total_cost():.4f} USD")
    floor = store.get_meta("noise_floor")
    if floor:
        lines.append(f"noise floor: val_bpb std {floor['val_std']:.5f} over {floor['n_seeds']} root seeds")
    if gens:
        lines.append("archive:")
        for p in sorted((Point.from_row(r) for r in gens[-1].archive), key=lambda p: p.val_bpb):
            c = store.candidate(p.candidate_id)
            lines.append(f"  {c.id:10s} val_bpb {p.val_bpb:.4f} +- {p.val_bpb_std:.4f} "
                         f"({p.n_seeds} seeds)  mem {p.peak_mem_mb:.0f} MB  "
                         f"{c.persona}: {c.hypothesis[:60]}")
    return "\n".join(lines)


def report_text(store: Store) -> str:
    gens = store.generations()
    cands = store.candidates()
    lines = [status_text(store), "", "hypervolume per generation:"]
    for g in gens:
        counts = " ".join(f"{k} {v}" for k, v in sorted(g.summary.get("counts", {}).items()))
        lines.append(f"  gen {g.generation:3d}  hv {g.hypervolume:.6g}  archive {len(g.archive)}  {counts}")
    lines.append("")
    lines.append("personas:")
    costs = store.cost_by_candidate()
    per: dict[str, list] = {name: [0, 0, 0.0, 0] for name in store.get_meta("personas", [])}
    for c in cands:
        if c.id == "root":
            continue
        acc = per.setdefault(c.persona, [0, 0, 0.0, 0])
        if c.status in FAILURES or c.status in (Status.CONFIRMED, Status.REJECTED):
            acc[0] += 1
        acc[1] += int(c.status == Status.CONFIRMED)
        acc[2] += costs.get(c.id, 0.0)
        acc[3] += int(c.status in FAILURES)
    stats = {p: PersonaStats(a[0], a[1], a[2]) for p, a in per.items()}
    probs = choice_probabilities(stats) if stats else {}
    for p, a in sorted(per.items()):
        lines.append(f"  {p:18s} decided {a[0]:3d}  confirmed {a[1]:3d}  failed {a[3]:3d}  "
                     f"cost {a[2]:.4f} USD  next-pick probability {probs.get(p, 0):.2f}")
    calls = store.llm_calls()
    if calls:
        errors = sum(1 for c in calls if c.error)
        lines.append(f"LLM calls: {len(calls)} ({errors} errors), "
                     f"{sum(c.prompt_tokens for c in calls)} prompt + "
                     f"{sum(c.completion_tokens for c in calls)} completion tokens, "
                     f"mean latency {sum(c.latency_s for c in calls) / len(calls):.1f} s")
    lines.append("")
    lines.append("recent events:")
    for e in reversed(store.events(15)):
        t = time.strftime("%H:%M:%S", time.localtime(e["created_at"]))
        lines.append(f"  {t} {e['kind']:14s} {e['message'][:110]}")
    return "\n".join(lines)


def archive_json(store: Store) -> str:
    gens = store.generations()
    return json.dumps(gens[-1].archive if gens else [], indent=2)
