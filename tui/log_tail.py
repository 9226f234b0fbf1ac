"""A live tail of one candidate's run log (the file the arena writes while it runs).

Flow: the app tells it which file to follow (`follow(path)`); once a second it reads the
bytes appended since the last look and adds them. It opens the file for reading only.

What it does not do: find the file (`tui.snapshot.candidate_log` does) or read the store.
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

from textual.widgets import Log

from population.display import clean

log = logging.getLogger(__name__)

FIRST_READ = 64 * 1024  # on switching files, show at most the last 64 KiB


class LogTail(Log):
    """Follows a text file as it grows."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=2000, **kwargs)
        self.path: Path | None = None
        self._following = False  # follow() called at least once
        self._offset = 0
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def on_mount(self) -> None:
        self.border_title = "log"
        self.set_interval(1.0, self.poll)

    def follow(self, path: Path | None, label: str = "") -> None:
        if self._following and path == self.path:
            return
        self._following = True
        self.path = path
        self._offset = 0
        self._partial = ""
        self._decoder.reset()
        self.clear()
        self.border_title = f"log {label}" if label else "log"
        self.border_subtitle = str(path) if path else "no log yet"
        if path is None:
            self.write_line("(no run log for this candidate yet)")
        self.poll()

    def poll(self) -> None:
        if self.path is None:
            return
        try:
            size = self.path.stat().st_size
            if size < self._offset:  # replaced or truncated: start over
                self._offset, self._partial = 0, ""
                self._decoder.reset()
                self.clear()
            if size == self._offset:
                return
            with open(self.path, "rb") as f:
                start = max(self._offset, size - FIRST_READ) if self._offset == 0 else self._offset
                f.seek(start)
                data = f.read(size - start)
        except OSError as exc:
            self.border_subtitle = f"{self.path}: {exc.strerror or exc}"
            return
        self._offset = start + len(data)
        self.border_subtitle = str(self.path)
        # incremental: a character split between two reads is decoded whole
        text = self._partial + self._decoder.decode(data)
        lines = text.split("\n")
        self._partial = lines.pop()
        if lines:  # a progress bar rewrites its line with \r: keep what it ended as
            self.write_lines(clean(ln.rstrip("\r").rsplit("\r", 1)[-1]) for ln in lines)
