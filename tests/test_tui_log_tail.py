"""The log tail on its own, in a one-widget app: growth, split characters, progress
bars, truncation."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult

from tui.log_tail import LogTail


class TailApp(App):
    def compose(self) -> ComposeResult:
        yield LogTail()


def _append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_tail_follows_growth_split_characters_progress_and_truncation(tmp_path):
    log = tmp_path / "run.log"
    log.write_bytes(b"start\nstep 1 ")
    seen = {}

    async def go() -> None:
        app = TailApp()
        async with app.run_test() as pilot:
            tail = app.query_one(LogTail)
            tail.follow(log, "c1")
            seen["first"] = list(tail.lines)  # the unfinished line waits for its newline
            snowman = "\u2603".encode()
            _append(log, b"loss 3.1 " + snowman[:1])
            tail.poll()
            _append(log, snowman[1:] + b"\n10%\r50%\r100%\n")
            tail.poll()
            seen["grown"] = list(tail.lines)
            log.write_bytes(b"again\n")  # a rerun truncates the file
            tail.poll()
            seen["restarted"] = list(tail.lines)
            tail.follow(tmp_path / "missing.log", "c2")
            seen["missing"] = (list(tail.lines), str(tail.border_subtitle))
            await pilot.pause()

    asyncio.run(go())
    assert seen["first"] == ["start"]
    assert seen["grown"] == ["start", "step 1 loss 3.1 \u2603", "100%"]
    assert seen["restarted"] == ["again"]
    assert seen["missing"][0] == [] and "No such file" in seen["missing"][1]
