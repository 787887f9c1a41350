"""Server-sent events: the part of the WHATWG framing that model streams use.

Both OpenAI wires stream `text/event-stream`. The parser is fed one line at a
time (httpx already splits lines on CR, LF and CRLF) so that the caller keeps
control of every read: it puts its idle timeout around each one.
"""

from __future__ import annotations

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
