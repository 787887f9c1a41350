"""How the CLI fails: one line on stderr naming the gRPC status, and an exit
code per kind of failure, so that scripts can tell them apart."""

from __future__ import annotations

import enum

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from spindle.grpc_errors import error_details


class ExitCode(enum.IntEnum):
    """The exit codes the README documents."""

    OK = 0
    SERVER_ERROR = 1  # any other refusal or failure of a call
    USAGE = 2  # click's own code for bad options and arguments
    NOT_FOUND = 3
    DENIED = 4  # UNAUTHENTICATED or PERMISSION_DENIED
    UNAVAILABLE = 5  # the service out of reach, or too slow to answer
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it


_EXIT_CODES = {
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.DENIED,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.DENIED,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
}


def exit_code_of(code: grpc.StatusCode) -> ExitCode:
    return _EXIT_CODES.get(code, ExitCode.SERVER_ERROR)


def error_reason(status: status_pb2.Status | None) -> str:
    """The ErrorInfo reason among a google.rpc.Status's details, or ""."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def one_line(text: str) -> str:
    """A message on one line, whatever line breaks it held."""
    return " ".join(text.split())


def describe(code_name: str, message: str, reason: str = "") -> str:
    """`CODE: message (REASON)`, the form every error of the CLI takes."""
    text = f"{code_name}: {one_line(message)}"
    return f"{text} ({reason})" if reason else text


def status_line(status: status_pb2.Status) -> str:
    """A google.rpc.Status (a failed turn's error) in one line; "" for OK."""
    if not status.code:
        return ""
    return describe(code_pb2.Code.Name(status.code), status.message, error_reason(status))


def describe_call(error: grpc.RpcError) -> str:
    """A failed call in one line, with the ErrorInfo reason when the status carries one."""
    reason, _, _ = error_details(error)
    code: grpc.StatusCode = error.code()
    return describe(code.name, str(error.details() or ""), reason)
