"""The one place where domain errors become gRPC statuses, and back.

Servicer methods are wrapped with `@rpc`; a `SpindleError` aborts the call
with its code and message, and with the details a program can act on, as a
`google.rpc.Status` in the `grpc-status-details-bin` trailer (the standard
rich error model, which every gRPC library decodes): `ErrorInfo` (the stable
reason and its metadata, domain `spindle.v1`), `RetryInfo` when a retry can
succeed, and `BadRequest` naming the wrong field. Anything else is logged
with its traceback and reported as INTERNAL without leaking details.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from spindle.auth import CREDENTIALS_INVALID, CREDENTIALS_REQUIRED
from spindle.errors import ErrorCode, ModelError, SpindleError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ERROR_DOMAIN = "spindle.v1"
# No message a caller sees is longer, in UTF-8 bytes: gRPC percent-encodes
# each non-ASCII byte of grpc-message (3 characters each) and sends the
# message again in grpc-status-details-bin, and clients refuse trailers
# past 8 KiB.
MAX_MESSAGE_BYTES = 1000


def status_code(code: ErrorCode) -> grpc.StatusCode:
    return grpc.StatusCode[code.value]


def error_code(status: grpc.StatusCode) -> ErrorCode:
    """The domain code of a gRPC status; codes we do not use become UNAVAILABLE."""
    try:
        return ErrorCode[status.name]
    except KeyError:
        return ErrorCode.UNAVAILABLE


def error_details(error: grpc.RpcError) -> tuple[str, dict[str, str], float | None]:
    """The ErrorInfo reason and metadata and the RetryInfo delay a failed call
    carries (("", {}, None) when it carries none)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the call's own status
        return "", {}, None
    reason, metadata, retry_after = "", {}, None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, metadata = str(info.reason), dict(info.metadata)
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return reason, metadata, retry_after


def sent_by_server(error: grpc.RpcError) -> bool:
    """Whether a Spindle servicer ended the call: `abort` always sends a
    google.rpc.Status trailer, and grpc's own failures (no connection, a
    peer gone mid-call) never carry one."""
    try:
        return rpc_status.from_call(error) is not None
    except ValueError:  # a trailer that contradicts the status: still a server's
        return True


def model_error_from_rpc(error: grpc.RpcError, what: str) -> ModelError:
    """A failed call to the model-service, as a domain error that keeps its code
    (a refusal of this service's own credentials is the service's fault, not
    the caller's: UNAVAILABLE). A status grpc made up means the model-service
    was not reached: the message says so, naming `what`. The model-service's
    own statuses pass as they are: their messages name the provider that
    failed (`provider 'x': cannot connect to the provider: ...`)."""
    status = error.code()
    details = error.details() or status.name
    reason, metadata, retry_after = error_details(error)
    if reason in (CREDENTIALS_REQUIRED, CREDENTIALS_INVALID):
        return ModelError(
            f"{what} does not accept this thread-service's credentials: {details}",
            code=ErrorCode.UNAVAILABLE,
        )
    unreached = status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
    if unreached and not sent_by_server(error):
        details = f"cannot reach {what}: {details}"
    return ModelError(
        details,
        code=error_code(status),
        reason=reason,
        metadata=metadata,
        retry_after=retry_after,
    )


def cut(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` in at most `limit` UTF-8 bytes (an ellipsis marks a cut)."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def rich_status(error: SpindleError) -> status_pb2.Status:
    """The error as a google.rpc.Status, with the details it carries."""
    status = status_pb2.Status(code=status_code(error.code).value[0], message=cut(error.message))
    if error.reason:
        info = error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
        status.details.add().Pack(info)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(error.retry_after, 0.0) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=cut(error.message, 300)
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the call with the status `exc` stands for (never returns)."""
    if isinstance(exc, SpindleError):
        await context.abort_with_status(rpc_status.to_status(rich_status(exc)))
    log.exception("unhandled error in %s", type(exc).__name__)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")


def rpc(method: F) -> F:
    """Wrap a servicer method (coroutine or async generator) to map its errors."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                # Closed with this one, at once: a call that ends while its
                # generator waits at a `yield` (its caller gone) must not leave
                # the method's own generator to be finalized later, anywhere.
                async with aclosing(method(self, request, context)) as responses:
                    async for response in responses:
                        yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, exc)

        return cast(F, stream)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return cast(F, unary)
