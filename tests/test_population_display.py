"""Output that attacks the viewer: escape sequences written by a candidate or an LLM never
reach the terminal, the report or the export's messages (population.display.clean)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from arena.records import Status
from population.display import clean, one_line
from population.store import Store, store_path

ROOT = Path(__file__).resolve().parent.parent

TITLE = "\x1b]0;pwned\x07"  # set the window title
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4K\x1b\\"  # OSC 52: write to the clipboard
ERASE = "\x1b[2J\x1b[H"  # clear the screen, cursor home
C1_CSI = "\x9b31m"  # the 8-bit CSI
BIDI = "\u202e"  # right-to-left override
HOSTILE = f"{TITLE}Traceback{CLIPBOARD}: boom{ERASE}{C1_CSI} at line\r 3{BIDI}\x00\x08"


def assert_inert(text: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "\x9d", "\u202e", "\x00", "\x08", "\r"):
        assert bad not in text, repr(bad)


def test_clean_removes_whole_sequences_and_keeps_the_words():
    out = clean(HOSTILE)
    assert_inert(out)
    assert "pwned" not in out and "cm0g" not in out  # the payloads go with their sequences
    assert out == "Traceback: boom at line\n 3"
    assert one_line(out) == "Traceback: boom at line 3"
    assert clean("tabs\tand\nnewlines stay") == "tabs\tand\nnewlines stay"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A finished simulated run whose texts then get hostile payloads, as a crashing
    candidate and a misbehaving LLM would leave them in the store."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    r = subprocess.run([sys.executable, "-m", "population.cli", "--simulate", "--generations", "2",
                        "--population", "3", "--sim-run-seconds", "0", "--run-dir", str(run), "-q"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with Store.open(store_path(run)) as store:
        archive = store.generations()[-1].archive
        best = min(archive, key=lambda r: r["val_bpb"])["candidate_id"]
        store.db["candidates"].update(best, {"hypothesis": f"faster {HOSTILE} warm-up",
                                             "message": f"confirmed {HOSTILE}"})
        crashed = next(c for c in store.candidates() if c.status == Status.REJECTED)
        store.db["candidates"].update(crashed.id, {"status": Status.CRASHED.value,
                                                   "message": f"RuntimeError: {HOSTILE}"})
        store.add_event("crashed", f"{crashed.id} crashed: {HOSTILE}", 2, crashed.id)
    return run


@pytest.mark.parametrize("command", [["status"], ["report"], ["export", "--best", "--format", "patch"],
                                     ["export", "--best", "--format", "series"]])
def test_no_command_prints_a_candidates_escape_sequences(hostile_run, command):
    r = subprocess.run([sys.executable, "-m", "population.cli", *command, "--run-dir", str(hostile_run)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert_inert(r.stdout + r.stderr)
    assert "Traceback: boom" in r.stdout or "faster Traceback" in r.stdout
    if command == ["report"]:
        md = (hostile_run / "report" / "report.md").read_text()
        assert_inert(md)
        assert "crashed: Traceback: boom at line 3" in md and "## Failures" in md  # shown, defanged
