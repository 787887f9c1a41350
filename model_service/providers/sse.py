"""Server-sent events: the part of the WHATWG framing that model streams use.

Both OpenAI wires stream `text/event-stream`. `SseLines` splits the text as
it arrives into lines and `SseParser` is fed one line at a time, so that the
caller keeps control of every read and can hand on at once all the events
that one read brought.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event; `event` is "" when the stream named no type."""

    event: str
    data: str


@dataclass(slots=True)
class SseParser:
    """Turns lines into events. `id` and `retry` are ignored: no stream is resumed."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        """The event that `line` completes, if it is the blank line ending one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event, "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment, usually a keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


@dataclass(slots=True)
class SseLines:
    """Splits text, as it arrives in chunks, into lines ended by CR, LF or CRLF;
    a line's end may come in a later chunk."""

    _partial: list[str] = field(default_factory=list)
    _after_cr: bool = False

    def feed(self, text: str) -> list[str]:
        """The lines `text` completes."""
        after_cr, self._after_cr = self._after_cr, text.endswith("\r")
        if after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split between chunks
        if _LINE_END.search(text) is None:
            if text:
                self._partial.append(text)  # a long line comes in many chunks
            return []
        lines = _LINE_END.split("".join(self._partial) + text)
        rest = lines.pop()  # after the last line end: the start of the next line
        self._partial = [rest] if rest else []
        return lines


# Only these end a line in an event stream (str.splitlines knows more).
_LINE_END = re.compile(r"\r\n|\r|\n")
