"""An OpenAI-compatible provider over HTTP: one pooled httpx client, SSE streams.

`wire_api` picks the request and stream format (`responses_wire` or
`chat_wire`); this module owns what both share: headers, the API key,
timeouts, retries, failing over between endpoints (`endpoints`) and the
mapping of HTTP failures to Spindle error codes. What goes upstream, how
faults are retried and which status each failure gets is documented once, in
the README's "Model providers" section.

The key and secret-looking headers never appear in errors or logs: every
message is redacted whole before it is cut (`redaction`), even when a
provider echoes a secret. Nothing here logs headers. httpx itself does not
retry (transport `retries=0`), so the retry loop here is the only one. Each
attempt holds its response in `async with`, so a consumer that stops
iterating, or a cancelled task, closes the upstream connection at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from model_service import telemetry
from model_service.providers import chat_wire, responses_wire
from model_service.providers.base import Served
from model_service.providers.endpoints import Endpoint, Endpoints
from model_service.providers.redaction import Redactor
from model_service.providers.sse import SseEvent, SseLines, SseParser
from model_service.settings import ProviderSettings
from spindle import tracing
from spindle.errors import ErrorCode, ModelError
from spindle.model import Completed, ModelEvent, ModelRequest

log = logging.getLogger(__name__)
# httpx logs every request's URL at INFO, query string and all, where a secret
# query parameter (`key=`, `sig=`) sits unredacted. The model-service's own line
# per request tells operators what they need, so httpx speaks up only on trouble.
logging.getLogger("httpx").setLevel(logging.WARNING)

# After the completing event, how long to wait for the end of the body so that
# the connection goes back to the pool rather than being closed.
_DRAIN_SECONDS = 1.0
_ERROR_BODY_LIMIT = 64 * 1024
# The longest a provider's message gets in an error or a log line, after redaction.
_MESSAGE_LIMIT = 500
# Header and query parameter names whose values are treated as secrets, and the
# shortest value masked (shorter ones would mask ordinary words).
_SECRET_NAME_WORDS = ("auth", "key", "token", "secret", "password", "signature")
_MIN_SECRET_LENGTH = 8
_AUTH_SCHEMES = ("bearer", "basic", "token")


class _Decoder(Protocol):
    def feed(self, event: SseEvent) -> list[ModelEvent]: ...


@dataclass(frozen=True, slots=True)
class _Wire:
    path: str
    encode: Callable[[ModelRequest], dict[str, Any]]
    decoder: Callable[[], _Decoder]


_WIRES = {
    "responses": _Wire(
        "/responses", responses_wire.encode_request, responses_wire.ResponsesDecoder
    ),
    "chat": _Wire("/chat/completions", chat_wire.encode_request, chat_wire.ChatDecoder),
}


class _Retryable(Exception):
    """A failed attempt that may be retried if the caller has seen nothing yet.

    `endpoint_failed`: the endpoint itself failed (a connection failure, 5xx, a
    stream cut before its first event), so the key's next endpoint is tried at
    once; not for a 429, which is the provider asking this caller to slow down.
    `unreachable`: no connection could be made, so the endpoint is marked down.
    """

    def __init__(
        self,
        error: ModelError,
        retry_after: float | None = None,
        *,
        endpoint_failed: bool = True,
        unreachable: bool = False,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.endpoint_failed = endpoint_failed
        self.unreachable = unreachable


class HttpProvider:
    """Streams model calls from one OpenAI-compatible provider."""

    def __init__(
        self,
        settings: ProviderSettings,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._wire = _WIRES[settings.wire_api]
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        self.endpoints = Endpoints(
            settings.name, settings.endpoints, self._wire.path, settings.endpoint_cooldown
        )
        self._client = httpx.AsyncClient(
            transport=transport
            or httpx.AsyncHTTPTransport(
                retries=0,
                limits=httpx.Limits(
                    max_connections=settings.max_connections,
                    max_keepalive_connections=min(64, settings.max_connections),
                ),
            ),
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.write_timeout,
                pool=settings.pool_timeout,
            ),
            headers={"accept": "text/event-stream", **settings.headers},
            params=dict(settings.query_params),
            follow_redirects=False,
        )
        self._idle = settings.idle_timeout if settings.idle_timeout > 0 else None
        self._upstream = telemetry.Upstream(settings.name)  # retries, errors, spans
        self._secrets = _configured_secrets(settings)
        self._redactor = Redactor(self._secrets)
        self._redactor_key = ""

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(
        self, request: ModelRequest, served: Served | None = None
    ) -> AsyncGenerator[list[ModelEvent], None]:
        """The events of one model call, in batches; raises `ModelError` with a provider-prefixed
        message. `served.endpoint` tells which endpoint served (or failed last)."""
        served = Served() if served is None else served
        redact = self._redactor
        try:
            key = self._api_key()
            redact = self._redactor_for(key)
            body = {**self.settings.extra_body, **self._wire.encode(request)}
            headers = self._identity_headers(request, key)
            order = self.endpoints.order(request.prompt_cache_key)
            position = retries = 0
            while True:
                endpoint = order[position]
                served.endpoint = endpoint.label
                started = False
                try:
                    async with aclosing(self._attempt(endpoint, body, headers, redact)) as events:
                        async for batch in events:
                            if not started:
                                started = True
                                self.endpoints.succeeded(endpoint)
                            yield batch
                    return
                except _Retryable as failure:
                    if started:
                        raise failure.error from None
                    message = redact.cut(failure.error.message, _MESSAGE_LIMIT)
                    if failure.endpoint_failed:
                        self.endpoints.failed(endpoint, unreachable=failure.unreachable)
                        if position + 1 < len(order):
                            # Another replica may serve it now: no backoff.
                            position += 1
                            self._upstream.retried()
                            log.warning(
                                "provider %r: endpoint %s: %s; trying endpoint %s",
                                self.settings.name,
                                endpoint.label,
                                message,
                                order[position].label,
                            )
                            continue
                    delay = self._retry_delay(retries, failure.retry_after)
                    if delay is None:
                        raise failure.error from None
                    retries += 1
                    self._upstream.retried()
                    log.warning(
                        "provider %r: endpoint %s: %s; retry %d of %d in %.2f s",
                        self.settings.name,
                        endpoint.label,
                        message,
                        retries,
                        self.settings.max_retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    if failure.endpoint_failed:
                        # Every endpoint failed: start again from the key's first.
                        order = self.endpoints.order(request.prompt_cache_key)
                        position = 0
        except ModelError as exc:
            message = f"provider {self.settings.name!r}: {redact.cut(exc.message, _MESSAGE_LIMIT)}"
            raise ModelError(
                message,
                code=exc.code,
                reason=exc.reason or "PROVIDER_ERROR",
                metadata={"provider": self.settings.name, **exc.metadata},
                retry_after=exc.retry_after,
            ) from None

    def _redactor_for(self, key: str) -> Redactor:
        """The redactor of the configured secrets and `key` (kept while the key is)."""
        if key != self._redactor_key:
            self._redactor = Redactor([key, *self._secrets])
            self._redactor_key = key
        return self._redactor

    def _api_key(self) -> str:
        name = self.settings.api_key_env
        if not name:
            return ""
        key = self._environ.get(name, "")
        if not key:
            raise ModelError(
                f"environment variable {name} (api_key_env) is not set",
                code=ErrorCode.FAILED_PRECONDITION,
            )
        return key

    def _identity_headers(self, request: ModelRequest, key: str) -> dict[str, str]:
        headers = {
            "session_id": request.thread_id,
            "x-spindle-thread-id": request.thread_id,
            "x-spindle-window-id": request.window_id,
            "x-openai-subagent": request.sub_agent_kind,
        }
        for name, value in headers.items():
            if not (value.isascii() and value.isprintable()):
                raise ModelError(
                    f"{name} must be printable ASCII to be sent as a header",
                    code=ErrorCode.INVALID_ARGUMENT,
                )
        if key:
            header = self.settings.api_key_header.lower()
            headers[header] = f"Bearer {key}" if header == "authorization" else key
        return {name: value for name, value in headers.items() if value}

    async def _attempt(
        self, endpoint: Endpoint, body: dict[str, Any], headers: dict[str, str], redact: Redactor
    ) -> AsyncGenerator[list[ModelEvent], None]:
        """One HTTP exchange, a batch of events per read; transport failures
        become `_Retryable` or `ModelError`. Every failure is counted, and the
        attempt is a span when tracing is on."""
        span = None
        if tracing.tracer is not None:
            url_full = endpoint.label + self._wire.path
            span, headers = self._upstream.request_span(endpoint.url, url_full, headers)
        try:
            in_body = False
            try:
                async with self._client.stream(
                    "POST", endpoint.url, json=body, headers=headers
                ) as response:
                    if span is not None:
                        telemetry.status_of(span, response)
                    await self._check_status(response, redact)
                    in_body = self._bound_body_reads(response)
                    chunks = response.aiter_text()
                    lines, parser, decoder = SseLines(), SseParser(), self._wire.decoder()
                    async for chunk in chunks:
                        # Every event this read completed goes on at once, in one batch.
                        batch: list[ModelEvent] = []
                        for line in lines.feed(chunk):
                            sse = parser.feed(line)
                            if sse is not None:
                                batch.extend(decoder.feed(sse))
                        end = next((n for n, e in enumerate(batch) if isinstance(e, Completed)), -1)
                        if end >= 0:
                            await self._drain(chunks)
                            yield batch[: end + 1]
                            return
                        if batch:
                            yield batch
                raise _Retryable(
                    ModelError("stream ended before completion", code=ErrorCode.UNAVAILABLE)
                )
            except httpx.ReadTimeout:
                if in_body:
                    raise self._idle_error() from None
                raise ModelError(
                    f"no data for more than {self.settings.read_timeout:g} s (read_timeout)",
                    code=ErrorCode.DEADLINE_EXCEEDED,
                ) from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The hop that failed is the provider's, named so: callers see this
                # message behind the model-service and the thread-service.
                message = f"cannot connect to the provider: {str(exc) or type(exc).__name__}"
                raise _Retryable(
                    ModelError(message, code=ErrorCode.UNAVAILABLE), unreachable=True
                ) from None
            except httpx.PoolTimeout:
                # Every pooled connection is busy: this process is saturated, not the endpoint.
                message = (
                    f"no free connection to the provider within {self.settings.pool_timeout:g} s "
                    "(pool_timeout, max_connections)"
                )
                raise _Retryable(
                    ModelError(message, code=ErrorCode.UNAVAILABLE), endpoint_failed=False
                ) from None
            except httpx.TransportError as exc:
                message = f"connection to the provider failed: {str(exc) or type(exc).__name__}"
                raise _Retryable(ModelError(message, code=ErrorCode.UNAVAILABLE)) from None
            except httpx.HTTPError as exc:  # a body httpx cannot decode, for one
                message = f"bad response: {str(exc) or type(exc).__name__}"
                raise ModelError(message, code=ErrorCode.UNAVAILABLE) from None
        except _Retryable as failure:
            self._upstream.failed(failure.error, span, unreachable=failure.unreachable)
            raise
        except ModelError as exc:
            self._upstream.failed(exc, span)
            raise
        finally:
            if span is not None:
                span.end()

    def _bound_body_reads(self, response: httpx.Response) -> bool:
        """Bound each read of the body by idle_timeout; True when that bound is tighter
        than read_timeout. httpcore reads the timeouts when the body starts, so this costs
        nothing per line (an `asyncio.timeout` per line cost about 0.28 ms per call)."""
        if self._idle is None or self._idle > self.settings.read_timeout:
            return False
        timeouts = response.request.extensions.get("timeout", {})
        response.request.extensions["timeout"] = {**timeouts, "read": self._idle}
        return True

    def _idle_error(self) -> ModelError:
        return ModelError(
            f"stream idle for more than {self.settings.idle_timeout:g} s (idle_timeout)",
            code=ErrorCode.DEADLINE_EXCEEDED,
        )

    async def _drain(self, chunks: AsyncIterator[str]) -> None:
        """Read what follows the completing event (`[DONE]`, the end of the body)."""
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                async for _ in chunks:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass  # the event is complete; the connection is simply not reused

    async def _check_status(self, response: httpx.Response, redact: Redactor) -> None:
        status = response.status_code
        if 200 <= status < 300:
            if response.headers.get("content-type", "").startswith("application/json"):
                # A whole JSON answer: the server ignored `stream: true`.
                raise ModelError(
                    "expected an event stream, got a JSON body (does the server stream?)",
                    code=ErrorCode.FAILED_PRECONDITION,
                )
            return
        detail, provider_code = _error_detail(await self._error_text(response, redact))
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        error = ModelError(
            f"HTTP {status}: {detail or response.reason_phrase or 'error'}",
            code=_status_code(status),
            reason="PROVIDER_ERROR",
            metadata={"http_status": str(status), "provider_code": provider_code[:64]},
            # A client may try again after the wait the provider asked for.
            retry_after=retry_after if status == 429 or status >= 500 else None,
        )
        if status == 429 and provider_code == "insufficient_quota":
            error.retry_after = None
            raise error
        if status == 429:
            # The provider's rate limit, not a failing endpoint: wait on the same
            # one (its prefix cache holds the key's prompts), never mark it down.
            raise _Retryable(error, retry_after, endpoint_failed=False)
        if status >= 500:
            raise _Retryable(error, retry_after)
        raise error

    async def _error_text(self, response: httpx.Response, redact: Redactor) -> str:
        """At most `_ERROR_BODY_LIMIT` bytes of an error body, read within
        idle_timeout, as redacted text (a secret cut off at the limit included)."""
        body = bytearray()
        try:
            async with asyncio.timeout(self._idle):
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass  # the status says enough
        text = bytes(body[:_ERROR_BODY_LIMIT]).decode("utf-8", "replace")
        return redact.truncated(text) if len(body) >= _ERROR_BODY_LIMIT else redact(text)

    def _retry_delay(self, failures: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        settings = self.settings
        if failures >= settings.max_retries:
            return None
        if retry_after is not None:
            if retry_after > settings.backoff_max:
                log.warning(
                    "provider %r: Retry-After %.1f s exceeds backoff_max %.1f s; not retrying",
                    settings.name,
                    retry_after,
                    settings.backoff_max,
                )
                return None
            return retry_after
        ceiling = min(settings.backoff_max, settings.backoff_initial * 2**failures)
        return random.uniform(0.0, max(ceiling, 0.0))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The wait a `Retry-After` header asks for (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _status_code(status: int) -> ErrorCode:
    if status in (400, 413, 422):
        return ErrorCode.INVALID_ARGUMENT
    if status >= 500:
        return ErrorCode.UNAVAILABLE
    return {
        401: ErrorCode.UNAUTHENTICATED,
        403: ErrorCode.PERMISSION_DENIED,
        404: ErrorCode.NOT_FOUND,
        408: ErrorCode.DEADLINE_EXCEEDED,
        429: ErrorCode.RESOURCE_EXHAUSTED,
    }.get(status, ErrorCode.FAILED_PRECONDITION)


def _configured_secrets(settings: ProviderSettings) -> list[str]:
    """Values to mask besides the API key: secret-looking headers and query
    parameters (and the token after `Bearer `), and passwords in base URLs."""
    values = [
        value
        for name, value in (*settings.headers.items(), *settings.query_params.items())
        if any(word in name.lower() for word in _SECRET_NAME_WORDS)
    ]
    values += [password for url in settings.endpoints if (password := httpx.URL(url).password)]
    secrets = []
    for value in values:
        scheme, _, token = value.partition(" ")
        candidates = [value, token.strip()] if scheme.lower() in _AUTH_SCHEMES else [value]
        secrets += [c for c in candidates if len(c) >= _MIN_SECRET_LENGTH]
    return secrets


def _error_detail(text: str) -> tuple[str, str]:
    """The provider's message and error code from an error body (JSON or text).
    Not cut here: the message is cut once redacted, in `HttpProvider.stream`."""
    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split()), ""
    error = data.get("error") if isinstance(data, dict) else None
    message: object = None
    code: object = None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code")
    elif isinstance(error, str):
        message = error
    elif isinstance(data, dict):
        message = data.get("message") or data.get("detail")
    if not isinstance(message, str):
        message = text
    return " ".join(message.split()), str(code or "")
