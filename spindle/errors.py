"""Domain errors: a few exception types, each naming a canonical status code.

Domain code raises these; `spindle.grpc_errors` maps them to gRPC statuses in
one place. Messages are shown to callers, so they must never hold secrets.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Canonical codes, named exactly as gRPC names them."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class SpindleError(Exception):
    """Base of every error a caller may see; `code` decides the status."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(SpindleError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SpindleError):
    code = ErrorCode.NOT_FOUND


class FailedPrecondition(SpindleError):
    code = ErrorCode.FAILED_PRECONDITION


class ModelError(SpindleError):
    """A model call failed; `code` says how (set from the provider's answer)."""

    code = ErrorCode.UNAVAILABLE
