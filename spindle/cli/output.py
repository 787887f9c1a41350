"""Where the CLI's results go and in which form: tables for people, or JSON
for scripts (`--json`: the API's own messages, one object per line for lists
and streams). Colour only on a terminal, and never under NO_COLOR (rich
checks both)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.text import Text

# Columns for tables written to a pipe or a file, so that ids never wrap.
PIPE_WIDTH = 240

M = TypeVar("M", bound=Message)


def make_console(*, stderr: bool) -> Console:
    """A console for stdout or stderr: a pipe gets wide lines unless COLUMNS says otherwise."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=PIPE_WIDTH)
    return console


def to_json(message: Message) -> str:
    """A message as one line of proto3 JSON, with proto field names and every field."""
    data = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Output:
    """The results of one command, as tables or as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = make_console(stderr=False)
        self.errors = make_console(stderr=True)

    def json(self, message: Message) -> None:
        self.console.out(to_json(message), highlight=False)

    def show(self, message: M, render: Callable[[M], RenderableType]) -> None:
        """One message: as JSON, or drawn by `render`."""
        if self.as_json:
            self.json(message)
        else:
            self.console.print(render(message))

    def rows(
        self, messages: Iterable[M], table: Callable[[list[M]], RenderableType], none: str
    ) -> None:
        """A listing: JSON lines as the pages arrive, or one table at the end
        (`none` when it is empty)."""
        if self.as_json:
            for message in messages:
                self.json(message)
            return
        found = list(messages)
        self.console.print(table(found) if found else Text(none, style="dim"))

    def warn(self, text: str) -> None:
        self.errors.print(Text(f"warning: {text}", style="yellow"))

    def note(self, text: str, style: str = "dim") -> None:
        """A line for the person at the terminal, on stderr so that it never mixes with results."""
        self.errors.print(Text(text, style=style))
