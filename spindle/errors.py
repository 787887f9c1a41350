"""Domain errors: a few exception types, each naming a canonical status code.

Domain code raises these; `spindle.grpc_errors` maps them to gRPC statuses in
one place. Messages are shown to callers, so they must never hold secrets.
"""

from __future__ import annotations

import enum
import json


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
    ABORTED = "ABORTED"
    INTERNAL = "INTERNAL"


class StartupError(Exception):
    """A service cannot start (a busy port, a data folder in use or unusable);
    the message names what and why, in one line."""


class SpindleError(Exception):
    """Base of every error a caller may see; `code` decides the status.

    Besides its message, an error may say what a program can act on: a stable
    `reason` (UPPER_SNAKE_CASE) with string `metadata`, the request `field`
    that was wrong, and `retry_after` seconds when a retry can succeed.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.field = field
        self.retry_after = retry_after


class InvalidArgument(SpindleError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SpindleError):
    code = ErrorCode.NOT_FOUND


class FailedPrecondition(SpindleError):
    code = ErrorCode.FAILED_PRECONDITION


class AlreadyExists(SpindleError):
    code = ErrorCode.ALREADY_EXISTS


class Aborted(SpindleError):
    code = ErrorCode.ABORTED


class Unauthenticated(SpindleError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(SpindleError):
    code = ErrorCode.PERMISSION_DENIED


class ResourceExhausted(SpindleError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unavailable(SpindleError):
    """A dependency (the database) cannot be reached now; a retry may succeed."""

    code = ErrorCode.UNAVAILABLE


class ModelError(SpindleError):
    """A model call failed; `code` says how (set from the provider's answer)."""

    code = ErrorCode.UNAVAILABLE


def quoted(value: object, limit: int | None = 200) -> str:
    """A caller's value as it may appear in a message: JSON-quoted, so control
    characters cannot forge lines, and cut to `limit` characters (None: whole)
    so that an error never echoes a huge input back."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)
