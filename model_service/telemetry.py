"""What the model-service tells operators about its model calls and its
upstream providers: metrics (requests by provider, model and status, their
latency, the tokens they reported; upstream retries and errors) and span
attributes that follow OpenTelemetry's GenAI conventions.

Model names come from callers, so a label names a model only when the
configuration does (`[model_service.models]`, and the embedded provider's
`spindle-echo`); any other is "other". Providers are configured names.
Hooks are cheap: a test each when metrics and tracing are off, a few
increments a call when on, nothing per streamed event.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import httpx
from prometheus_client import Counter, Histogram

from spindle import metrics, tracing
from spindle.errors import ErrorCode, ModelError
from spindle.model import ModelRequest, Usage

if TYPE_CHECKING:
    from opentelemetry.trace import Span

# The embedded provider's documented name, and the thread-service's default model.
EMBEDDED_MODEL = "spindle-echo"
NO_PROVIDER = "none"  # a model that no provider serves (NOT_FOUND)

MODEL_REQUESTS = Counter(
    "spindle_model_requests",
    "Model requests (Generate calls), by provider, model and the status code they ended with",
    ["provider", "model", "code"],
)
MODEL_DURATION = Histogram(
    "spindle_model_request_duration_seconds",
    "Time from a model request's arrival to its end, by provider and model",
    ["provider", "model"],
    buckets=metrics.LATENCY_BUCKETS,
)
INPUT_TOKENS = Counter(
    "spindle_model_input_tokens",
    "Input tokens the model calls reported, cached ones included, by provider and model",
    ["provider", "model"],
)
CACHED_INPUT_TOKENS = Counter(
    "spindle_model_cached_input_tokens",
    "Input tokens served from the provider's prompt cache, by provider and model",
    ["provider", "model"],
)
OUTPUT_TOKENS = Counter(
    "spindle_model_output_tokens",
    "Output tokens the model calls reported, by provider and model",
    ["provider", "model"],
)
UPSTREAM_RETRIES = Counter(
    "spindle_upstream_retries",
    "HTTP requests to a provider made again after a failed attempt (on the next endpoint, "
    "or after a backoff), by provider",
    ["provider"],
)
UPSTREAM_ERRORS = Counter(
    "spindle_upstream_errors",
    "HTTP attempts to a provider that failed, by provider and HTTP status (connect: no "
    "connection; timeout: no data in time; transport: a connection lost or an answer cut "
    "short or not a stream)",
    ["provider", "http_status"],
)


class ModelCalls:
    """The model-call metrics, their children bound once per label set."""

    def __init__(self, models: Collection[str]) -> None:
        self.known = frozenset(models) | {EMBEDDED_MODEL}
        self._series: dict[tuple[str, str], tuple[Histogram, Counter, Counter, Counter]] = {}
        self._codes: dict[tuple[str, str, str], Counter] = {}

    def started(self, request: ModelRequest) -> ModelCall:
        return ModelCall(self, request)

    def _record(self, provider: str, model: str, code: str, seconds: float, usage: Usage) -> None:
        model = metrics.bounded(model, self.known)
        series = self._series.get((provider, model))
        if series is None:
            series = self._series[(provider, model)] = (
                MODEL_DURATION.labels(provider, model),
                INPUT_TOKENS.labels(provider, model),
                CACHED_INPUT_TOKENS.labels(provider, model),
                OUTPUT_TOKENS.labels(provider, model),
            )
        counter = self._codes.get((provider, model, code))
        if counter is None:
            counter = self._codes[(provider, model, code)] = MODEL_REQUESTS.labels(
                provider, model, code
            )
        duration, input_tokens, cached_tokens, output_tokens = series
        counter.inc()
        duration.observe(seconds)
        if usage.input_tokens:
            input_tokens.inc(usage.input_tokens)
        if usage.cached_input_tokens:
            cached_tokens.inc(usage.cached_input_tokens)
        if usage.output_tokens:
            output_tokens.inc(usage.output_tokens)


class ModelCall:
    """One Generate call: its metrics when it ends, and its GenAI attributes on
    the call's span (made by the gRPC edge) when tracing is on."""

    __slots__ = ("_calls", "_request", "_span", "_started")

    def __init__(self, calls: ModelCalls, request: ModelRequest) -> None:
        self._calls = calls
        self._request = request
        self._started = time.perf_counter()
        self._span = tracing.current_span() if tracing.tracer is not None else None
        if self._span is not None:
            self._span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": request.model,
                    "gen_ai.conversation.id": request.thread_id,
                    "spindle.thread_id": request.thread_id,
                    "spindle.window_id": request.window_id,
                    "spindle.prompt_cache_key": request.prompt_cache_key,
                }
            )

    def ended(self, provider: str, code: str, usage: Usage, endpoint: str) -> None:
        """The call ended with status `code` (a gRPC code's name), served by
        `provider` ("-" when none serves the model) at `endpoint`."""
        if provider == "-":
            provider = NO_PROVIDER
        if metrics.on:
            seconds = time.perf_counter() - self._started
            self._calls._record(provider, self._request.model, code, seconds, usage)
        span = self._span
        if span is not None:
            span.set_attributes(
                {
                    "gen_ai.provider.name": provider,
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                }
            )
            if endpoint:
                span.set_attribute("spindle.endpoint", endpoint)


class Upstream:
    """One HTTP provider's retries and failed attempts, and (tracing on) the
    CLIENT span of each attempt, whose context goes upstream as `traceparent`."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._retries = UPSTREAM_RETRIES.labels(provider)
        self._errors: dict[str, Counter] = {}

    def retried(self) -> None:
        if metrics.on:
            self._retries.inc()

    def failed(self, error: ModelError, span: Span | None, *, unreachable: bool = False) -> None:
        """An attempt failed with `error` (unreachable: no connection was made)."""
        label = _failure_label(error, unreachable)
        if metrics.on:
            counter = self._errors.get(label)
            if counter is None:
                counter = self._errors[label] = UPSTREAM_ERRORS.labels(self.provider, label)
            counter.inc()
        if span is not None:
            span.set_attribute("error.type", label)
            tracing.fail(span, label)

    def request_span(
        self, url: httpx.URL, url_full: str, headers: dict[str, str]
    ) -> tuple[Span, dict[str, str]]:
        """The span of one attempt (tracing on), and `headers` with its context."""
        span = tracing.start_span(
            "POST",
            {
                "http.request.method": "POST",
                "url.full": url_full,
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                "gen_ai.provider.name": self.provider,
            },
            client=True,
        )
        headers = dict(headers)
        tracing.inject(headers, span)
        return span, headers


def _failure_label(error: ModelError, unreachable: bool) -> str:
    status = error.metadata.get("http_status", "")
    if status.isdigit() and 100 <= int(status) <= 599:
        return status
    if unreachable:
        return "connect"
    if error.code is ErrorCode.DEADLINE_EXCEEDED:
        return "timeout"
    return "transport"


def status_of(span: Span, response: httpx.Response) -> None:
    """Record the response's status on an attempt's span."""
    span.set_attribute("http.response.status_code", response.status_code)
