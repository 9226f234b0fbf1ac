"""Untrusted text made safe to show: what a candidate or an LLM wrote, before a person sees it.

Flow: every place that shows such text (the `evolve` narrative, `evolve status/report`,
the export's summary and commit messages, the TUI) passes it through `clean` first. A
crash message, a hypothesis or a log line can carry terminal escape sequences (a title
change, a clipboard write through OSC 52, cursor moves that overwrite earlier lines);
`clean` removes them whole, and every other control character, keeping newlines and
tabs only where the caller allows them.

What it does not do: shorten, wrap or escape for markup (Rich and Textual markup is the
TUI's business: it shows text as `Text`, not as markup).
"""

from __future__ import annotations

import re

# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC
# (ESC P/X/^/_ ... ST), and two-character escapes (ESC + one byte). The 8-bit C1 forms
# (0x9b CSI, 0x9d OSC, 0x90 DCS ...) are matched the same way.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -~]?"  # any other escape
)
# what is left: C0 controls but tab/newline, DEL, C1 controls, and the bidi overrides
# that make text display in another order than it is stored
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: object, newlines: bool = True) -> str:
    """`text` without escape sequences and control characters. `newlines=False` also
    turns newlines and tabs into spaces (for one-line displays)."""
    s = _SEQUENCES.sub("", str(text)).replace("\r\n", "\n")
    s = _CONTROLS.sub("", s.replace("\r", "\n"))
    if not newlines:
        s = " ".join(s.split())
    return s


def one_line(text: object) -> str:
    """`clean` for a single line of display: whitespace runs become one space."""
    return clean(text, newlines=False)
