"""A task cell's stdout or stderr as a terminal (and JupyterLab) shows it.

A carriage return starts its line over, so a text progress bar redrawn 40 times is one line, as under an
ordinary cell; ANSI colour codes are kept for the front-end to render. Text is processed as it is written,
so what the cell printed costs its own size once, however often it is shown.
"""

from __future__ import annotations


class Screen:
    """Finished lines plus the line being written; ``write`` has the signature of a text stream's."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current = ""
        self.dropped = 0  # earlier lines let go by ``trim``
        self.clears = 0  # how many times it was cleared
        self.fresh: list[str] | None = None  # when a list, every write is kept there too, until ``take``n
        self._cr = False  # the last write ended with a carriage return not yet known to be ``\r\n``

    def write(self, text: str) -> int:
        if self.fresh is not None:
            self.fresh.append(text)
        if self._cr and not text.startswith("\n"):
            self.current = ""
        self._cr = text.endswith("\r")
        if self._cr:
            text = text[:-1]
        parts = text.replace("\r\n", "\n").split("\n")
        for i, part in enumerate(parts):
            if i:
                self.lines.append(self.current)
                self.current = ""
            if "\r" in part:  # the text after the last carriage return is what the line shows
                part = part.rpartition("\r")[2]
                self.current = ""
            self.current += part
        return len(text)

    def flush(self) -> None:
        """Nothing to flush: a stream-like object needs the method."""

    def text(self) -> str:
        """Everything, as shown: the line being written last, without a newline of its own."""
        return "\n".join(self.lines + [self.current]) if self.lines else self.current

    def tail(self, count: int) -> tuple[int, str]:
        """The last ``count`` lines as shown, and how many earlier lines are left out."""
        lines = self.lines + [self.current] if self.current else self.lines
        hidden = max(len(lines) - count, 0)
        return self.dropped + hidden, "\n".join(lines[hidden:])

    def clear(self) -> None:
        """``clear_output()``: the cell's output starts over."""
        self.lines, self.current, self.dropped, self._cr = [], "", 0, False
        if self.fresh is not None:
            del self.fresh[:]
        self.clears += 1

    def take(self) -> str:
        """What was written since the last ``take`` (safe against a thread writing meanwhile)."""
        fresh = self.fresh or []
        count = len(fresh)
        text = "".join(fresh[:count])
        del fresh[:count]
        return text

    def trim(self, keep: int) -> None:
        """Let go of all but the last ``keep`` finished lines (a live view shows only its tail)."""
        if len(self.lines) > 2 * keep:  # (amortised: not at every line)
            self.dropped += len(self.lines) - keep
            del self.lines[:-keep]

    def skip(self, lines: int) -> None:
        """Forget everything so far: the text that ended ``lines`` lines (the one being written first) was not
        sent. They count as dropped."""
        self.dropped += len(self.lines) + lines
        self.lines, self.current, self._cr = [], "", False
