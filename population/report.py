"""What a run found, from its store: `evolve status`, the closing summary, `evolve report`.

Two views with different jobs:
- `status_text`: where the run stands *now* (is it alive, which generation, runs in
  flight, the archive's head, the last events): a glance at a live run.
- `summary_text` and `write_report`: what the run *found* and how sure it is, in words,
  for the morning after. `write_report` writes `results.tsv` (autoresearch's columns,
  one row per run), `progress.png` (best val_bpb over evaluations and over hours, every
  candidate a dot, kept vs discarded), `pareto.png` (the front with the root) and
  `report.md`, which links them.

The val-test gap (test_bpb - val_bpb, mean over a candidate's runs) is shown beside
every score: selection sees only val_bpb, so a gap that grows along a lineage says the
search fits the validation text rather than the language (`gap_trend`).

Flow: reads a `Store` (normally opened read-only, so it never blocks the running loop);
text a candidate or an LLM wrote goes through `population.display` before it is shown.
What it does not do: change the store, or decide anything (scores come from the
archive rows the loop wrote; population.scoring is the one home of scoring rules).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from arena.errors import EvolveError
from arena.records import FAILURES, Status
from population.archive import Point
from population.bandit import PersonaStats, choice_probabilities
from population.display import clean, one_line
from population.scoring import Scorer
from population.store import Candidate, Store

ROOT_ID = "root"
KEPT = (Status.CONFIRMED,)
GAP_GROWTH = 2.0  # a lineage's gap "grows" when it rose by this many noise-floor sds


class ReportError(EvolveError):
    """The report cannot be made (nothing measured yet)."""


def pid_alive(pid: int) -> bool:
    """Whether the process that wrote a run row still runs (the writer of a live store)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- facts shared by every view -----------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """A candidate's score as `population.scoring.Scorer` computes it for the loop and
    the TUI, with the val-test gap beside it."""

    val_bpb: float
    val_std: float  # spread of its own runs
    n: int
    peak_mem_mb: float
    gap: float | None  # mean test_bpb - val_bpb over the runs that count


def scores(store: Store) -> dict[str, Score]:
    """Every measured candidate's score over everything measured so far."""
    scorer = Scorer.from_store(store)
    v = scorer.live_version()
    out = {}
    for cid in scorer.cands:
        p = scorer.score(cid, v)
        if p is not None:
            out[cid] = Score(p.val_bpb, p.val_bpb_std, p.n_seeds, p.peak_mem_mb, scorer.gap(cid, v))
    return out


def lineage(cands: dict[str, Candidate], cid: str) -> list[Candidate]:
    """Root first, `cid` last (first parents only)."""
    chain: list[Candidate] = []
    cur: str | None = cid
    while cur is not None and cur in cands:
        chain.append(cands[cur])
        cur = cands[cur].parent_id
    return list(reversed(chain))


def gap_trend(chain: list[str], gap_of: dict[str, float | None], noise_sd: float | None) -> str | None:
    """A warning when the val-test gap grew along the lineage (candidate ids, root
    first) by more than GAP_GROWTH noise-floor sds (None when it did not, or cannot be told)."""
    gaps = [(cid, gap_of[cid]) for cid in chain if gap_of.get(cid) is not None]
    if len(gaps) < 2 or not noise_sd:
        return None
    (first_id, first), (last_id, last) = gaps[0], gaps[-1]
    if last - first > GAP_GROWTH * noise_sd:  # type: ignore[operator]
        return (f"the val-test gap grows along this lineage ({first_id} {first:+.4f} -> {last_id} {last:+.4f}, "
                f"more than {GAP_GROWTH:g} noise sds): it may fit the validation text, not the language")
    return None


def _gap(s: Score | None) -> str:
    return "-" if s is None or s.gap is None else f"{s.gap:+.4f}"


def _verdict(c: Candidate) -> str:
    """autoresearch's words for a candidate's status."""
    if c.status in KEPT:
        return "keep"
    if c.status == Status.REJECTED:
        return "discard"
    if c.status in FAILURES:
        return "crash"
    return "pending"


# -- status: where the run stands now ---------------------------------------------------------


def session_state(store: Store) -> str:
    sessions = store.sessions()
    if not sessions:
        return "no session yet"
    last = sessions[-1]
    if last["ended_at"] is not None:
        return f"stopped ({one_line(last['outcome'])})"
    return f"running (pid {last['pid']})" if pid_alive(last["pid"]) else "killed (continue with evolve --resume)"


def status_text(store: Store) -> str:
    cands = store.candidates()
    gens = store.generations()
    sessions = store.sessions()
    evals = store.evaluations(include_unfinished=True)
    running = [e for e in evals if e.status == "running"]
    counts: dict[str, int] = {}
    for c in cands:
        counts[c.status.value] = counts.get(c.status.value, 0) + 1
    lines = []
    if sessions:
        lines.append(f"session {sessions[-1]['id']} (pid {sessions[-1]['pid']}): {session_state(store)}")
    lines.append(f"generations finished: {len(gens) - 1 if gens else 0} "
                 f"(archive version {gens[-1].generation if gens else '-'})")
    lines.append(f"candidates: {len(cands)}  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append(f"evaluations: {sum(1 for e in evals if e.finished)} finished, {len(running)} running"
                 + "".join(f"\n  running: {e.candidate_id} seed {e.seed} ({e.purpose.value}) for "
                           f"{time.time() - e.started_at:.0f} s" for e in running))
    lines.append(f"LLM cost: {store.total_cost():.4f} USD")
    floor = store.get_meta("noise_floor")
    if floor:
        lines.append(f"noise floor: val_bpb std {floor['val_std']:.5f} over {floor['n_seeds']} root seeds")
    sc = scores(store)
    if gens:
        lines.append("archive (val-test gap = test_bpb - val_bpb, sealed split):")
        for p in sorted((Point.from_row(r) for r in gens[-1].archive), key=lambda p: p.val_bpb):
            c = store.candidate(p.candidate_id)
            lines.append(f"  {c.id:10s} val_bpb {p.val_bpb:.4f} +- {p.val_bpb_std:.4f} "
                         f"({p.n_seeds} seeds)  mem {p.peak_mem_mb:.0f} MB  gap {_gap(sc.get(c.id))}  "
                         f"{c.persona}: {one_line(c.hypothesis)}")
    if gens:
        best = min(gens[-1].archive, key=lambda r: r["val_bpb"])["candidate_id"]
        chain = [c.id for c in lineage({c.id: c for c in cands}, best)]
        warn = gap_trend(chain, {c: s.gap for c, s in sc.items()}, (floor or {}).get("val_std"))
        if warn:
            lines.append(f"warning: {warn}")
    events = store.events(5)
    if events:
        lines.append("latest events:")
        for e in reversed(events):
            t = time.strftime("%H:%M:%S", time.localtime(e["created_at"]))
            lines.append(f"  {t} {e['kind']:14s} {one_line(e['message'])}")
    return "\n".join(lines)


# -- the summary in words -----------------------------------------------------------------------


SAVING_EVENTS = {"cascade_stopped": "stopped early by the evaluation cascade",
                 "novelty_refused": "refused before the arena as repeats",
                 "preflight_refused": "refused before the arena by the one-step preflight"}


def device_time_saved(store: Store) -> dict[str, tuple[int, float]]:
    """How many children each early exit took out of the arena, and the training
    budget (seconds) that saved, from the events that recorded it."""
    out: dict[str, tuple[int, float]] = {}
    marks = ", ".join("?" * len(SAVING_EVENTS))
    for r in store.db.query(f"SELECT kind, payload FROM events WHERE kind IN ({marks})", list(SAVING_EVENTS)):
        try:
            seconds = float(json.loads(r["payload"] or "{}").get("saved_budget_s") or 0.0)
        except (ValueError, TypeError, AttributeError):
            seconds = 0.0
        n, total = out.get(SAVING_EVENTS[r["kind"]], (0, 0.0))
        out[SAVING_EVENTS[r["kind"]]] = (n + 1, total + seconds)
    return out


def summary_text(store: Store, run_dir: str | os.PathLike | None = None) -> str:
    """What the run found and how sure it is, in a few sentences."""
    cands = {c.id: c for c in store.candidates()}
    gens = store.generations()
    sc = scores(store)
    floor = store.get_meta("noise_floor") or {}
    noise_sd = floor.get("val_std")
    where = f"run {run_dir}: " if run_dir else ""
    lines = [f"{where}{session_state(store)}; generations finished: {max(len(gens) - 1, 0)}"]
    root = sc.get(ROOT_ID)
    if root is None:
        lines.append("The unmodified train.py has not been measured yet: nothing to compare.")
        return "\n".join(lines)
    lines.append(f"The unmodified train.py scored val_bpb {root.val_bpb:.4f} (sd {root.val_std:.4f} over {root.n} "
                 "seeds: the noise floor; smaller differences are not findings).")
    children = [c for c in cands.values() if c.id != ROOT_ID and c.generation <= (gens[-1].generation if gens else 0)]
    decided = [c for c in children if c.status in (Status.CONFIRMED, Status.REJECTED) or c.status in FAILURES]
    if not children:
        lines.append("No child has been decided yet.")
        return "\n".join(lines)
    kept = [c for c in decided if c.status == Status.CONFIRMED]
    failed = [c for c in decided if c.status in FAILURES]
    lines.append(f"{len(decided)} {'child' if len(decided) == 1 else 'children'} decided: {len(kept)} kept (better than their parent by a paired test "
                 f"on the same seeds), {len(decided) - len(kept) - len(failed)} discarded, {len(failed)} failed to run.")
    saved = device_time_saved(store)
    if saved:
        lines.append("Device time saved: " + "; ".join(
            f"{n} {what} ({seconds:,.0f} s of training budget)" for what, (n, seconds) in saved.items()) + ".")
    best_row = min(gens[-1].archive, key=lambda r: (r["val_bpb"], r["peak_mem_mb"])) if gens else None
    if best_row is None or best_row["candidate_id"] == ROOT_ID:
        best_child = min((c for c in children if c.id in sc), key=lambda c: sc[c.id].val_bpb, default=None)
        if best_child is None:
            lines.append("No child was measured: the root stays the best train.py.")
        else:
            d = sc[best_child.id].val_bpb - root.val_bpb
            lines.append(f"Nothing beat the root beyond the noise: the best child, {best_child.id}, scored "
                         f"{sc[best_child.id].val_bpb:.4f} ({d:+.4f}), which a paired test did not confirm. "
                         "The root stays the best train.py.")
        return "\n".join(lines)
    best = cands[best_row["candidate_id"]]
    d = best_row["val_bpb"] - root.val_bpb
    sds = f", {abs(d) / noise_sd:.1f} noise sds" if noise_sd else ""
    lines.append(f"Best: {best.id} ({best.persona}: {one_line(best.hypothesis)}) with val_bpb "
                 f"{best_row['val_bpb']:.4f} over {best_row.get('n_seeds', 1)} seeds, {d:+.4f} against the root"
                 f"{sds}; peak memory {best_row['peak_mem_mb']:.0f} MB.")
    chain = lineage(cands, best.id)
    steps = [f"{c.id}: {one_line(c.message)}" for c in chain[1:] if c.message]
    if steps:
        lines.append("How sure: each step of its lineage passed a paired test against its parent -- "
                     + "; ".join(steps) + ".")
    bs = sc.get(best.id)
    if bs is not None and bs.gap is not None and root.gap is not None:
        lines.append(f"Val-test gap (sealed test split): root {root.gap:+.4f}, best {bs.gap:+.4f}.")
    warn = gap_trend([c.id for c in chain], {c: s.gap for c, s in sc.items()}, noise_sd)
    if warn:
        lines.append("Warning: " + warn + ".")
    return "\n".join(lines)


# -- the report files -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    results_tsv: Path
    progress_png: Path
    pareto_png: Path
    markdown: Path


def write_results_tsv(store: Store, path: Path) -> Path:
    """autoresearch's results.tsv: commit, val_bpb, memory_gb, status, description; one
    row per finished run (a crash has val_bpb 0.000000 and memory 0.0, as there)."""
    cands = {c.id: c for c in store.candidates()}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["commit", "val_bpb", "memory_gb", "status", "description"])
        for e in store.evaluations():
            if e.status == "cancelled":
                continue
            c = cands[e.candidate_id]
            status = "crash" if not e.ok else _verdict(c)
            desc = f"{c.id} seed {e.seed} ({e.purpose.value}): {one_line(c.hypothesis)}".replace("\t", " ")
            w.writerow([(c.commit or "")[:7], f"{e.val_bpb or 0.0:.6f}", f"{(e.peak_mem_mb or 0.0) / 1024:.1f}",
                        status, desc])
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"keep": "#2ca02c", "discard": "#9e9e9e", "crash": "#d62728", "pending": "#1f77b4"}


def plot_progress(store: Store, path: Path) -> Path:
    """Best val_bpb so far over evaluations and over hours; every measured candidate a
    dot at the time its first own run finished, coloured kept/discarded/pending."""
    plt = _plt()
    cands = {c.id: c for c in store.candidates()}
    evals = [e for e in store.evaluations() if e.finished_at is not None and e.status != "cancelled"]
    evals.sort(key=lambda e: e.finished_at)  # type: ignore[arg-type,return-value]
    if not evals:
        raise ReportError("no run has finished yet: nothing to plot")
    t0 = min(e.started_at for e in evals)
    sc = scores(store)
    first: dict[str, tuple[int, float]] = {}
    for i, e in enumerate(evals, 1):
        if e.candidate_id in sc and e.ok and e.candidate_id not in first and e.purpose != "pair":
            first[e.candidate_id] = (i, (e.finished_at - t0) / 3600.0)  # type: ignore[operator]
    gens = store.generations()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, sharey=True)
    for ax, k, label in ((axes[0], 0, "evaluations (runs finished)"), (axes[1], 1, "hours since the start")):
        for verdict, colour in COLOURS.items():
            pts = [(first[c][k], sc[c].val_bpb) for c in first if _verdict(cands[c]) == verdict]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, c=colour, label=verdict,
                           edgecolors="none", zorder=3)
        if gens:
            xs, ys = [], []
            for g in gens:
                n = sum(1 for e in evals if e.finished_at <= g.finished_at)  # type: ignore[operator]
                xs.append(n if k == 0 else (g.finished_at - t0) / 3600.0)
                ys.append(min(r["val_bpb"] for r in g.archive))
            xs.append(max(xs[-1], len(evals) if k == 0 else (evals[-1].finished_at - t0) / 3600.0))  # type: ignore[operator]
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", color="black", linewidth=1.8, label="best kept", zorder=4)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val_bpb (lower is better)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("best val_bpb so far; each dot a candidate (mean of its own runs)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pareto(store: Store, path: Path) -> Path:
    """Every measured candidate in (peak memory, val_bpb); the newest archive as a front;
    the root marked."""
    plt = _plt()
    sc = scores(store)
    if not sc:
        raise ReportError("no run has finished yet: nothing to plot")
    gens = store.generations()
    members = {r["candidate_id"] for r in gens[-1].archive} if gens else set()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    others = [c for c in sc if c not in members and c != ROOT_ID]
    ax.scatter([sc[c].peak_mem_mb for c in others], [sc[c].val_bpb for c in others], s=24, c=COLOURS["discard"],
               label="measured", zorder=2)
    front = sorted((sc[c].peak_mem_mb, sc[c].val_bpb, c) for c in members if c in sc)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=COLOURS["keep"], zorder=3)
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=48, c=COLOURS["keep"], label="archive (front)",
                   zorder=4)
        for m, v, c in front:
            ax.annotate(c, (m, v), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if ROOT_ID in sc:
        r = sc[ROOT_ID]
        ax.scatter([r.peak_mem_mb], [r.val_bpb], s=160, marker="*", c="#ff7f0e", label="root", zorder=5)
    ax.set_xlabel("peak memory (MB)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title("Pareto front: val_bpb against peak memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_markdown(store: Store, run_dir: str | os.PathLike, files: ReportFiles | None = None,
                    focus: str | None = None) -> str:
    cands = {c.id: c for c in store.candidates()}
    gens = store.generations()
    sc = scores(store)
    floor = store.get_meta("noise_floor") or {}
    out = [f"# evolve report: {run_dir}", "", summary_text(store, run_dir).replace("\n", "\n\n"), ""]
    if files is not None:
        out += [f"![progress]({files.progress_png.name})", "", f"![pareto]({files.pareto_png.name})", "",
                f"Every run: [{files.results_tsv.name}]({files.results_tsv.name}) (autoresearch's columns).", ""]
    if gens:
        out += ["## Archive", "", "| candidate | val_bpb | sd | seeds | memory MB | val-test gap | persona | hypothesis |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(gens[-1].archive, key=lambda r: r["val_bpb"]):
            c = cands[r["candidate_id"]]
            hyp = one_line(c.hypothesis).replace("|", "\\|")
            out.append(f"| {c.id} | {r['val_bpb']:.4f} | {r.get('val_bpb_std', r.get('val_std', 0)):.4f} | {r.get('n_seeds', 1)} | "
                       f"{r['peak_mem_mb']:.0f} | {_gap(sc.get(c.id))} | {c.persona} | {hyp} |")
        out.append("")
        target = focus or min(gens[-1].archive, key=lambda r: r["val_bpb"])["candidate_id"]
        chain = lineage(cands, target)
        out += [f"## Lineage of {target}", "", "| candidate | val_bpb | val-test gap | decision |", "| --- | --- | --- | --- |"]
        for c in chain:
            s = sc.get(c.id)
            out.append(f"| {c.id} | {'-' if s is None else f'{s.val_bpb:.4f}'} | {_gap(s)} | "
                       f"{one_line(c.message).replace('|', '/') or c.status.value} |")
        warn = gap_trend([c.id for c in chain], {c: s.gap for c, s in sc.items()}, floor.get("val_std"))
        out += ["", f"**Warning:** {warn}." if warn else "The val-test gap does not grow along this lineage.", ""]
        out += ["## Generations", "", "| generation | hypervolume | archive | outcomes |", "| --- | --- | --- | --- |"]
        for g in gens:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(g.summary.get("counts", {}).items()))
            out.append(f"| {g.generation} | {g.hypervolume:.6g} | {len(g.archive)} | {counts} |")
        out.append("")
    out += ["## Personas", "", "| persona | decided | kept | failed | LLM cost USD | next-pick probability |",
            "| --- | --- | --- | --- | --- | --- |"]
    costs = store.cost_by_candidate()
    per: dict[str, list] = {name: [0, 0, 0.0, 0] for name in store.get_meta("personas", [])}
    for c in cands.values():
        if c.id == ROOT_ID:
            continue
        acc = per.setdefault(c.persona, [0, 0, 0.0, 0])
        acc[0] += int(c.status in FAILURES or c.status in (Status.CONFIRMED, Status.REJECTED))
        acc[1] += int(c.status == Status.CONFIRMED)
        acc[2] += costs.get(c.id, 0.0)
        acc[3] += int(c.status in FAILURES)
    probs = choice_probabilities({p: PersonaStats(a[0], a[1], a[2]) for p, a in per.items()}) if per else {}
    for p, a in sorted(per.items()):
        out.append(f"| {p} | {a[0]} | {a[1]} | {a[3]} | {a[2]:.4f} | {probs.get(p, 0):.2f} |")
    calls = store.llm_calls()
    if calls:
        errors = sum(1 for c in calls if c.error)
        out += ["", (f"LLM calls: {len(calls)} ({errors} errors), {sum(c.prompt_tokens for c in calls)} prompt + "
                f"{sum(c.completion_tokens for c in calls)} completion tokens, mean latency "
                f"{sum(c.latency_s for c in calls) / len(calls):.1f} s.")]
    fails = [c for c in cands.values() if c.status in FAILURES]
    if fails:
        out += ["", "## Failures", ""]
        for c in fails:
            last = (clean(c.message).strip().splitlines() or [""])[-1]
            out.append(f"- {c.id} ({c.persona}) {c.status.value}: {last}")
    out += ["", "## Recent events", "", "```"]
    for e in reversed(store.events(20)):
        t = time.strftime("%H:%M:%S", time.localtime(e["created_at"]))
        out.append(f"{t} {e['kind']:14s} {one_line(e['message'])}")
    out += ["```", ""]
    return "\n".join(out)


def write_report(store: Store, run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 focus: str | None = None) -> ReportFiles:
    """Write results.tsv, progress.png, pareto.png and report.md into `out_dir`."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(d, d / "results.tsv", d / "progress.png", d / "pareto.png", d / "report.md")
    write_results_tsv(store, files.results_tsv)
    plot_progress(store, files.progress_png)
    plot_pareto(store, files.pareto_png)
    files.markdown.write_text(report_markdown(store, run_dir, files, focus), encoding="utf-8")
    return files
