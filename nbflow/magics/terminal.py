"""A task cell's stdout or stderr as a terminal (and JupyterLab) shows it.

A carriage return starts its line over, so a text progress bar redrawn 40 times is one line, as under an
ordinary cell; ANSI colour codes are kept for the front-end to render. Text is processed as it is written,
so what the cell printed costs its own size once, however often it is shown: the line being written is kept
in pieces, joined when read, so a million one-character writes cost a million appends, not a million copies.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` as UTF-8 can carry it to the kernel and the front end: a character it cannot encode (a lone
    surrogate, such as ``os.fsdecode`` makes of a file name that is not UTF-8) becomes its escape ``\\udcff``."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


class Screen:
    """Finished lines plus the line being written; ``write`` has the signature of a text stream's."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._parts: list[str] = []  # the line being written, in the pieces written
        self.dropped = 0  # earlier lines let go by ``trim``
        self.clears = 0  # how many times it was cleared
        self.fresh: list[str] | None = None  # when a list, every write is kept there too, until ``take``n
        self._cr = False  # the last write ended with a carriage return not yet known to be ``\r\n``

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:  # (print(..., end="") writes one): it leaves a pending carriage return pending
            return 0
        text = printable(text)
        if self.fresh is not None:
            self.fresh.append(text)
        if self._cr and text[0] != "\n":
            self._parts = []
        if "\r" not in text and "\n" not in text:  # most writes: more of the line
            self._cr = False
            self._parts.append(text)
            return len(text)
        self._cr = text[-1] == "\r"
        pieces = (text[:-1] if self._cr else text).replace("\r\n", "\n").split("\n")
        for i, piece in enumerate(pieces):
            if i:
                self._lines.append("".join(self._parts))
                self._parts = []
            if "\r" in piece:  # the text after the last carriage return is what the line shows
                piece = piece.rpartition("\r")[2]
                self._parts = []
            if piece:
                self._parts.append(piece)
        return len(text)

    def flush(self) -> None:
        """Nothing to flush: a stream-like object needs the method."""

    def _current(self) -> str:
        """The line being written, as one piece from now on."""
        parts = self._parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    def text(self) -> str:
        """Everything, as shown: the line being written last, without a newline of its own."""
        return "\n".join(self._lines + [self._current()]) if self._lines else self._current()

    def tail(self, count: int) -> tuple[int, str]:
        """The last ``count`` lines as shown, and how many earlier lines are left out."""
        current = self._current()
        lines = self._lines[max(len(self._lines) - count, 0) :] + ([current] if current else [])
        shown = lines[max(len(lines) - count, 0) :]
        return self.dropped + len(self._lines) + bool(current) - len(shown), "\n".join(shown)

    def clear(self) -> None:
        """``clear_output()``: the cell's output starts over."""
        self._lines, self._parts, self.dropped, self._cr = [], [], 0, False
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
        if len(self._lines) > 2 * keep:  # (amortised: not at every line)
            self.dropped += len(self._lines) - keep
            del self._lines[:-keep]

    def skip(self, lines: int) -> None:
        """Forget everything so far: the text that ended ``lines`` lines (the one being written first) was not
        sent. They count as dropped."""
        self.dropped += len(self._lines) + lines
        self._lines, self._parts, self._cr = [], [], False
