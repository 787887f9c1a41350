"""Logging for both services, set up in one place: the level, the format and
the stream.

`text` (the default) is for people: one line a record, as before. `json` is
for log pipelines: one JSON object a line, with `time`, `level`, `logger`,
`message`, and the thread id, turn id and trace id of the request or turn
that wrote it, where there is one. Those come from context variables that
the gRPC edge (a request's `thread_id`) and the turn's own task (its thread
and turn) set, so every line written while serving them carries them
without any call site passing them along. JSON escapes whatever a field
holds, so no value can forge a line. `stdout` is for containers, whose
operators read both streams; stderr stays the default.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

from spindle import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ID_CHARS = 64
_THREAD_ID: ContextVar[str] = ContextVar("log_thread_id", default="")
_TURN_ID: ContextVar[str] = ContextVar("log_turn_id", default="")
# Whether lines carry the context: only JSON shows it, so only then is it set.
_json = False


def configure(level: str, format: str = "text", stream: str = "stderr") -> None:
    """Send the process's log records to `stream` in `format`, from `level` up."""
    global _json
    handler = logging.StreamHandler(_stream(stream))
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _json = format == "json"


def _stream(name: str) -> TextIO:
    return sys.stdout if name == "stdout" else sys.stderr


def bind_request(request: Any) -> None:
    """Name the thread (and turn) a request names, if it has those fields, as
    the ones this call's log lines are about. Cut to an id's length: they are
    the caller's text, not yet checked."""
    if _json:
        thread_id = getattr(request, "thread_id", "")
        if thread_id and isinstance(thread_id, str):
            _THREAD_ID.set(thread_id[:_ID_CHARS])
        turn_id = getattr(request, "turn_id", "")
        if turn_id and isinstance(turn_id, str):
            _TURN_ID.set(turn_id[:_ID_CHARS])


def bind_turn(thread_id: str, turn_id: str) -> None:
    """Name the thread and turn of this task's log lines (a turn's own task)."""
    if _json:
        _THREAD_ID.set(thread_id)
        _TURN_ID.set(turn_id)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: what a record says, and the context it was said in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        thread_id, turn_id = _THREAD_ID.get(), _TURN_ID.get()
        if thread_id:
            entry["thread_id"] = thread_id
        if turn_id:
            entry["turn_id"] = turn_id
        trace_id, span_id = tracing.current_ids()
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, span_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
