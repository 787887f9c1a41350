"""The one place where domain errors become gRPC statuses, and back.

Servicer methods are wrapped with `@rpc`; a `SpindleError` aborts the call
with its code and message, anything else is logged with its traceback and
reported as INTERNAL without leaking details.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc

from spindle.errors import ErrorCode, ModelError, SpindleError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def status_code(code: ErrorCode) -> grpc.StatusCode:
    return grpc.StatusCode[code.value]


def error_code(status: grpc.StatusCode) -> ErrorCode:
    """The domain code of a gRPC status; codes we do not use become UNAVAILABLE."""
    try:
        return ErrorCode[status.name]
    except KeyError:
        return ErrorCode.UNAVAILABLE


def model_error_from_rpc(error: grpc.RpcError, what: str) -> ModelError:
    """A failed call to the model-service, as a domain error that keeps its code."""
    status = error.code()
    details = error.details() or status.name
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and "connect" in details:
        details = f"cannot reach {what}: {details}"
    return ModelError(details, code=error_code(status))


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, SpindleError):
        await context.abort(status_code(exc.code), exc.message)
    log.exception("unhandled error in %s", type(exc).__name__)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")


def rpc(method: F) -> F:
    """Wrap a servicer method (coroutine or async generator) to map its errors."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for response in method(self, request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc)

        return cast(F, stream)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return cast(F, unary)
