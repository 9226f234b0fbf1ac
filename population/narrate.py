"""The main job's narrative: what `evolve` is doing now and how far the current step is.

Flow: the CLI makes one `Narrator`. `say(text)` prints one line of narrative (the
loop's events, the CLI's steps), cleaned of control characters (population.display);
`watch(store_path, ...)` starts a thread that reads the run's store read-only every
second and renders `progress_line`: the generation, the runs in flight with their
seconds left, the proposals waiting for the LLM, and an estimate of the time left in
the generation. On a terminal that line stays at the bottom, rewritten in place; off a
terminal (a log file, CI) it is printed as a plain line when it changes, at most once
every `plain_every_s` seconds.

What it does not do: decide or write anything; it reads only the store.
"""

from __future__ import annotations

import logging
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from population.display import one_line
from population.store import Store, StoreError

log = logging.getLogger(__name__)

STARTUP_GUESS_S = 20.0  # start-up plus evaluation of one run, before any run has finished


def format_seconds(s: float) -> str:
    s = max(0, round(s))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def progress_line(store: Store, budget_s: float, slots: int, population: int, initial_seeds: int,
                  root_seeds: int, generations: int, now: float | None = None) -> str:
    """One line: where the run stands and how long the current generation still needs."""
    now = time.time() if now is None else now
    g = store.last_generation() + 1
    evals = store.evaluations(include_unfinished=True)
    done = [e for e in evals if e.finished and e.status != "cancelled" and e.finished_at]
    per_run = (statistics.median(e.finished_at - e.started_at for e in done)  # type: ignore[operator]
               if done else budget_s + STARTUP_GUESS_S)
    running = [e for e in evals if e.status == "running"]
    parts = [f"generation {g} of {generations}" if g else f"generation 0 (the root, {root_seeds} seeds)"]
    if g == 0:
        left_runs = root_seeds - sum(1 for e in done if e.candidate_id == "root")
    else:
        cands = store.candidates(g)
        waiting = [c for c in cands if c.status.value == "proposed" and c.commit is None]
        if waiting:
            oldest = min(c.created_at for c in waiting)
            parts.append(f"proposing {len(waiting)} child(ren), the oldest for {format_seconds(now - oldest)}")
        own = {e.candidate_id for e in done if e.generation == g and e.purpose in ("initial", "race")}
        pending = [c for c in cands if c.id not in own and c.status.value in ("proposed", "running")]
        left_runs = (population - len(cands)) * 2 + 2 * len(pending)  # a child's run and its parent's
    for e in sorted(running, key=lambda e: e.started_at)[:slots]:
        elapsed = now - e.started_at
        step = (f"training {format_seconds(elapsed)} of {format_seconds(budget_s)}" if elapsed < budget_s
                else "evaluating")
        parts.append(f"{e.candidate_id} seed {e.seed}: {step}")
    if left_runs > 0:
        current_left = max((per_run - (now - e.started_at) for e in running), default=0.0)
        queued = max(0, left_runs - len(running))
        eta = max(0.0, current_left) + per_run * -(-queued // max(1, slots))
        more = " (at least: racing may add runs)" if g else ""
        parts.append(f"about {format_seconds(eta)} left in this generation{more}")
    return one_line(" | ".join(parts))


class Narrator:
    """Prints the narrative to `stream` (default stdout). `quiet` prints nothing."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, tty: bool | None = None,
                 plain_every_s: float = 60.0) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self._lock = threading.Lock()
        self._status = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def say(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
            self.stream.write(one_line(text) + "\n")
            if self.tty and self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def _show(self, line: str) -> None:
        with self._lock:
            if self.tty:
                width = 200
                try:
                    import shutil

                    width = shutil.get_terminal_size().columns - 1
                except OSError:
                    pass
                self._status = line[:width]
                self.stream.write("\r\x1b[K" + self._status)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def watch(self, store_file: Path, budget_s: float, slots: int, population: int, initial_seeds: int,
              root_seeds: int, generations: int, every_s: float = 1.0) -> None:
        """Start the progress thread (a daemon: it never keeps the process alive)."""
        if self.quiet:
            return

        def loop() -> None:
            last, last_plain = "", 0.0
            store = Store.open(store_file, readonly=True)
            try:
                while not self._stop.wait(every_s):
                    try:
                        line = progress_line(store, budget_s, slots, population, initial_seeds,
                                             root_seeds, generations)
                    except (sqlite3.Error, StoreError) as exc:  # a torn read: the next tick retries
                        log.debug("progress line skipped: %s", exc)
                        continue
                    if self.tty:
                        self._show(line)
                    elif line != last and time.monotonic() - last_plain >= self.plain_every_s:
                        self._show(line)
                        last, last_plain = line, time.monotonic()
            finally:
                store.close()

        self._thread = threading.Thread(target=loop, name="narrator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self._status = ""
