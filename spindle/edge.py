"""What every call goes through before a servicer sees it: decoding,
authentication and the per-principal request rate.

- A payload that does not decode as the method's request message ends the
  call with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN and log a
  traceback for each), logged in one line at most every few seconds.
- The caller's credentials (a bearer token in `authorization`, or a TLS
  client certificate) name a principal (`spindle.auth`), or the call ends
  UNAUTHENTICATED. The servicer reads it with `caller()`.
- Health checking and reflection stay open to every caller: probes and
  tools need them, and they reveal nothing but the public API.
- Every call is observed here, once for every method: counted by the
  status code it ended with and timed (`spindle.metrics`, when served),
  traced as a SERVER span continuing the caller's trace (`spindle.tracing`,
  when on), and the thread it names bound to its log lines (`spindle.logs`,
  in JSON). Each costs one test when off.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc

from spindle import logs, metrics, tracing
from spindle.auth import LOCAL, Authenticator, Principal
from spindle.errors import InvalidArgument, SpindleError
from spindle.grpc_errors import abort
from spindle.ratelimit import RateLimit

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=LOCAL)


def caller() -> Principal:
    """The principal of the call being served (set by `Edge` for this call)."""
    return _CALLER.get()


class _Undecodable:
    """What a request that could not be decoded becomes, instead of an error."""


_UNDECODABLE = _Undecodable()


class _OncePer:
    """Lets a log line through at most once per `seconds`, counting the rest."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = -seconds
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self.suppressed += 1
            return False
        self._last = now
        return True


class Edge(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator, requests: RateLimit | None = None) -> None:
        self.authenticator = authenticator
        self.requests = requests
        self._undecodable_log = _OncePer(10.0)
        # Per method the server registered (never a name a caller made up):
        # its handler as registered, and as wrapped. gRPC asks for it on every
        # call; wrapping it once is enough.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        known = self._handlers.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(details.method, handler)
        self._handlers[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` with undecodable payloads kept for `admit` to refuse, and
        each of its behaviours behind a `_Gate`."""
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:
                return _UNDECODABLE

        gate = _Gate(
            self, method, metrics.RpcMetrics(method), open=method.startswith(OPEN_PREFIXES)
        )
        wrapped = {
            kind: getattr(gate, kind)(getattr(handler, kind))
            for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, kind) is not None
        }
        return handler._replace(request_deserializer=safe_decode, **wrapped)

    def admit(self, request: Any, context: grpc.aio.ServicerContext, gate: _Gate) -> None:
        """Raise unless the call may proceed; remember its principal."""
        self.check_decoded(request, gate.method)
        if gate.open:
            return
        metadata = dict(context.invocation_metadata() or ())
        principal = self.authenticator.authenticate(
            _text(metadata.get("authorization")), _certificate_names(context)
        )
        if self.requests is not None:
            self.requests.check(principal.name, 1)
        _CALLER.set(principal)
        logs.bind_request(request)

    def check_decoded(self, request: Any, method: str) -> None:
        if request is not _UNDECODABLE:
            return
        if self._undecodable_log.ready():
            log.warning(
                "undecodable %s request (%d more since the last such line)",
                method,
                self._undecodable_log.suppressed,
            )
            self._undecodable_log.suppressed = 0
        raise InvalidArgument(f"the payload is not a valid request message for {method}")


class _Gate:
    """Wraps one method's behaviours so each call is admitted first, and
    observed from its arrival to its end. Open methods (health, reflection)
    are only checked for undecodable payloads."""

    def __init__(
        self, edge: Edge, method: str, rpc_metrics: metrics.RpcMetrics, *, open: bool
    ) -> None:
        self.edge = edge
        self.method = method
        self.metrics = rpc_metrics
        self.open = open

    def _arrived(self, context: grpc.aio.ServicerContext) -> tuple[float, Span | None]:
        span = None
        if tracing.tracer is not None and not self.open:  # probes would flood the traces
            span = tracing.server_span(self.method, context.invocation_metadata())
        return time.perf_counter(), span

    def _ended(
        self,
        context: grpc.aio.ServicerContext,
        arrived: tuple[float, Span | None],
        failure: BaseException | None,
    ) -> None:
        started, span = arrived
        if not metrics.on and span is None:
            return
        code = _status_of(context, failure)
        if metrics.on:
            self.metrics.observe(code, time.perf_counter() - started)
        if span is not None:
            tracing.end_server_span(span, code)

    @asynccontextmanager
    async def _call(
        self, request: Any, context: grpc.aio.ServicerContext, *, abort_on_error: bool = False
    ) -> AsyncIterator[None]:
        """Admit a call, then record how it ended (metrics, its trace span).
        With `abort_on_error`, a domain error inside it (a streamed request
        that does not decode) ends the call with its status."""
        arrived = self._arrived(context)
        failure: BaseException | None = None
        admitted = False
        try:
            try:
                self.edge.admit(request, context, self)
                admitted = True
                yield
            except SpindleError as exc:
                if admitted and not abort_on_error:
                    raise
                failure = exc
                await abort(context, exc)
        except BaseException as exc:
            failure = failure or exc
            raise
        finally:
            self._ended(context, arrived, failure)

    def unary_unary(self, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._call(request, context):
                return await behaviour(request, context)

        return guarded

    def unary_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behaviour):
            # A streaming method in gRPC's reader/writer style (it writes its
            # responses with `context.write` and returns None), as health
            # checking's Watch is: wrapped so, since gRPC picks the style by
            # the handler it is given.
            return self.unary_unary(behaviour)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._call(request, context):
                async for response in behaviour(request, context):
                    yield response

        return guarded

    def _checked(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                self.edge.check_decoded(request, self.method)
                yield request

        return checked()

    def stream_unary(self, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async with self._call(None, context, abort_on_error=True):
                return await behaviour(self._checked(requests), context)

        return guarded

    def stream_stream(self, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async with self._call(None, context, abort_on_error=True):
                async for response in behaviour(self._checked(requests), context):
                    yield response

        return guarded


def _status_of(context: grpc.aio.ServicerContext, failure: BaseException | None) -> grpc.StatusCode:
    """The status code a call ended with: the one it was aborted with, OK when
    it returned, CANCELLED (or DEADLINE_EXCEEDED) when it was cut short, and
    UNKNOWN for an exception that gRPC itself turns into a status."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if failure is None:
        return grpc.StatusCode.OK
    if isinstance(failure, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The verified client certificate's common name and subject alternative names."""
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names.extend(value.decode("utf-8", "replace") for value in auth.get(key, ()))
    return names
