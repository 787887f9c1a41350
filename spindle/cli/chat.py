"""`spindle chat [THREAD]`: talk to a thread's model at the terminal.

Each line typed is a turn; its text is shown as it streams, then how the turn
ended with its usage. Ctrl-C during a turn asks the service to interrupt that
turn (InterruptTurn, by the id from turn_started); a second Ctrl-C, or one at
the prompt, quits. When the model calls a function declared with `--tool`,
the user types the call's output, which goes back as the next turn's input.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import click
import grpc
from google.protobuf import json_format

from spindle.cli import tables
from spindle.cli.client import Client
from spindle.cli.errors import describe_call, status_line
from spindle.cli.options import client_command
from spindle.cli.output import Output
from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb

PROMPT = "you> "
_ENDED_STYLES = {
    pb.TURN_STATUS_COMPLETED: "dim",
    pb.TURN_STATUS_INTERRUPTED: "yellow",
    pb.TURN_STATUS_FAILED: "red",
}


class EndOfInput(Exception):
    """The user closed the input (Ctrl-D): the chat ends."""


class Interrupter:
    """What Ctrl-C does while a turn runs. The first asks the service to
    interrupt the turn, from a thread of its own (never from inside the signal
    handler, which runs in the middle of the stream's read); the second gives
    up waiting and quits."""

    def __init__(
        self, client: Client, out: Output, thread_id: str, end_line: Callable[[], None]
    ) -> None:
        self.client = client
        self.out = out
        self.thread_id = thread_id
        self.end_line = end_line
        self.turn_id = ""
        self.pressed = 0
        self.sent = False
        self._previous: Any = None

    def __enter__(self) -> Interrupter:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def started(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self._send_once()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt
        self.end_line()
        self.out.note("interrupting the turn (Ctrl-C again quits)", style="yellow")
        self._send_once()

    def _send_once(self) -> None:
        if self.pressed and self.turn_id and not self.sent:
            self.sent = True
            threading.Thread(target=self._interrupt, args=(self.turn_id,), daemon=True).start()

    def _interrupt(self, turn_id: str) -> None:
        request = pb.InterruptTurnRequest(thread_id=self.thread_id, turn_id=turn_id)
        try:
            self.client.call(self.client.threads.InterruptTurn, request)
        except grpc.RpcError as exc:
            # A turn that ended meanwhile needs no interrupt.
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                self.out.note(f"spindle: {describe_call(exc)}", style="red")


class Chat:
    """The loop: read a line, run it as a turn, answer the model's function calls."""

    def __init__(self, client: Client, out: Output, thread: pb.Thread, tools: list[c.Tool]) -> None:
        self.client = client
        self.out = out
        self.thread = thread
        self.tools = tools
        self._line_open = False
        self._streamed = False

    def run(self) -> None:
        thread = self.thread
        self.out.note(f"thread {thread.id} · {thread.model} · {thread.cwd}", style="bold")
        self.out.note("Type a message; Ctrl-C interrupts a turn, Ctrl-D quits.")
        try:
            while True:
                text = self.ask(PROMPT)
                if text.strip():
                    self.converse([c.Item(message=c.Message(role=c.ROLE_USER, text=text))])
        except EndOfInput:
            if not self.out.as_json:
                self.out.console.out("")

    def ask(self, prompt: str) -> str:
        """A line from the user; the prompt only for a person (not with --json)."""
        try:
            return input("" if self.out.as_json else prompt)
        except EOFError:
            raise EndOfInput from None

    def converse(self, given: list[c.Item]) -> None:
        """Turns until the model calls no more functions (or the user stops answering)."""
        while given:
            completed = self.run_turn(given)
            calls = completed.pending_function_calls if completed else []
            given = [self.answer(call) for call in calls]

    def answer(self, call: c.FunctionCall) -> c.Item:
        if not self.out.as_json:
            self.out.note(f"the model calls {call.name}({call.arguments}) [{call.call_id}]", "cyan")
        output = self.ask(f"output of {call.name}> ")
        return c.Item(
            function_call_output=c.FunctionCallOutput(call_id=call.call_id, output=output)
        )

    def run_turn(self, given: list[c.Item]) -> pb.TurnCompleted | None:
        """One turn, shown as it streams; how it ended, or None when the call failed."""
        request = pb.RunTurnRequest(thread_id=self.thread.id, input=given, tools=self.tools)
        completed = None
        self._streamed = False
        with Interrupter(self.client, self.out, self.thread.id, self._end_line) as interrupter:
            try:
                for response in self.client.stream(self.client.threads.RunTurn, request):
                    for event in response.events:
                        kind = event.WhichOneof("kind")
                        if kind == "turn_started":
                            interrupter.started(event.turn_started.turn_id)
                        elif kind == "turn_completed":
                            completed = event.turn_completed
                        self.show(event)
            except grpc.RpcError as exc:
                self._end_line()
                self.out.note(f"spindle: {describe_call(exc)}", style="red")
                return None
        return completed

    def show(self, event: pb.TurnEvent) -> None:
        if self.out.as_json:
            self.out.json(event)
            return
        kind = event.WhichOneof("kind")
        if kind == "text_delta":
            self.out.console.out(event.text_delta.text, end="", highlight=False)
            self._line_open = self._streamed = True
        elif kind == "item_done":
            item = event.item_done.item
            # A message that came whole, without deltas, is shown whole.
            if item.WhichOneof("kind") == "message" and not self._streamed:
                self.out.console.out(item.message.text, highlight=False)
        elif kind == "turn_completed":
            self._end_line()
            self.out.note(
                ended(event.turn_completed), _ENDED_STYLES.get(event.turn_completed.status, "")
            )

    def _end_line(self) -> None:
        if self._line_open:
            self.out.console.out("")
            self._line_open = False


def ended(completed: pb.TurnCompleted) -> str:
    """How a turn ended, with its usage: `completed · 14 input tokens (0 cached), ...`."""
    parts = [tables.turn_status(completed.status), tables.usage(completed.usage)]
    if completed.error.code:
        parts.append(status_line(completed.error))
    return " · ".join(parts)


def load_tools(names: tuple[str, ...], tools_file: str) -> list[c.Tool]:
    """The tools to declare: named ones without a schema, and a file's (a JSON
    list of the API's Tool: name, description, parameters_json)."""
    tools = [c.Tool(name=name) for name in names]
    if tools_file:
        try:
            entries = json.loads(Path(tools_file).read_text(encoding="utf-8"))
            if not isinstance(entries, list):
                raise ValueError("expected a JSON list of tools")
            tools += [json_format.ParseDict(entry, c.Tool()) for entry in entries]
        except (OSError, ValueError, json_format.ParseError) as exc:
            raise click.BadParameter(str(exc), param_hint="--tools-file") from None
    return tools


@click.command()
@click.argument("thread", required=False, default="")
@click.option(
    "--tool",
    "tool_names",
    multiple=True,
    metavar="NAME",
    help="A function the model may call (repeatable); you type each call's output.",
)
@click.option(
    "--tools-file",
    default="",
    metavar="PATH",
    help="A JSON list of tools: {name, description, parameters_json}.",
)
@click.option("--model", default="", help="The model of a new thread.")
@click.option("--instructions", default="", help="Instructions of a new thread.")
@client_command
def chat(
    client: Client,
    out: Output,
    thread: str,
    tool_names: tuple[str, ...],
    tools_file: str,
    model: str,
    instructions: str,
) -> None:
    """Chat with THREAD's model, or, without THREAD, in a new thread started in
    the current directory."""
    tools = load_tools(tool_names, tools_file)
    if thread:
        if model or instructions:
            raise click.UsageError(
                "--model and --instructions are for a new thread, without THREAD"
            )
        current = client.call(client.threads.GetThread, pb.GetThreadRequest(thread_id=thread))
    else:
        request = pb.StartThreadRequest(cwd=os.getcwd(), model=model, instructions=instructions)
        current = client.call(client.threads.StartThread, request)
        for warning in current.warnings:
            out.warn(warning)
    Chat(client, out, current.thread, tools).run()
