"""Traces, with OpenTelemetry, when `tracing = "otlp"` asks for them.

Off (the default), nothing of OpenTelemetry is imported and `tracer` stays
None; every hook tests it first, so tracing costs nothing. On, the process
exports its spans over OTLP/HTTP (the `otel` extra: `pip install
'spindle[otel]'`), configured by the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`).

The trace context travels as W3C `traceparent` (and `tracestate`): in, from a
caller's gRPC metadata (`server_span`); out, in the metadata of calls to the
model-service and the headers of requests to a provider (`inject`). Only
the W3C trace context, whatever OTEL_PROPAGATORS says: W3C baggage would
carry whatever a public caller put in it on to the provider. Every
call and every turn runs in an asyncio task of its own, so a span made
current there (`make_current`) is current for what that task does, and for
tasks it starts, and ends with it: nothing needs detaching.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from spindle.settings import SettingsError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

INSTALL_HINT = "pip install 'spindle[otel]'"

tracer: Tracer | None = None
_provider: Any = None
_propagator: Any = None  # W3C trace context only

# gRPC codes that mark a server's span as an error (OpenTelemetry's RPC
# conventions): the others are the caller's doing, not the server's.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def setup(mode: str, service_name: str) -> None:
    """Start exporting spans as `mode` says ("" leaves tracing off). The
    service's name is `service_name` unless OTEL_SERVICE_NAME (or
    OTEL_RESOURCE_ATTRIBUTES) names it."""
    global tracer, _provider, _propagator
    if not mode:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise SettingsError(
            f"tracing = {mode!r} needs OpenTelemetry's SDK and OTLP exporter ({INSTALL_HINT}): "
            f"{exc}"
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    _propagator = TraceContextTextMapPropagator()
    tracer = provider.get_tracer("spindle")


def shutdown() -> None:
    """Export what is left (at the end of the process)."""
    global tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    tracer = _provider = None


def server_span(full_method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Span:
    """A SERVER span for a call to `full_method`, child of the caller's span
    when its metadata carries one, made current for the call's task."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    parent = _propagator.extract(carrier)
    service, _, method = full_method.lstrip("/").rpartition("/")
    span = tracer.start_span(
        full_method.lstrip("/"),
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    make_current(span)
    return span


def end_server_span(span: Span, code: grpc.StatusCode) -> None:
    from opentelemetry.trace import StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(StatusCode.ERROR, code.name)
    span.end()


def start_span(name: str, attributes: Mapping[str, Any], *, client: bool = False) -> Span:
    """A span, child of the current one (not made current itself)."""
    from opentelemetry.trace import SpanKind

    assert tracer is not None
    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    return tracer.start_span(name, kind=kind, attributes=dict(attributes))


def make_current(span: Span) -> None:
    """Make `span` current for the rest of this task (see the module's note)."""
    from opentelemetry import context, trace

    context.attach(trace.set_span_in_context(span))


def current_span() -> Span | None:
    """The current span; None when tracing is off or no span is current."""
    if tracer is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def fail(span: Span, description: str) -> None:
    """Mark `span` as an error, saying why (an error code, never a message's text)."""
    from opentelemetry.trace import StatusCode

    span.set_status(StatusCode.ERROR, description)


def inject(carrier: MutableMapping[str, str], span: Span | None = None) -> None:
    """Put the trace context (of `span`, else the current one) into `carrier`."""
    from opentelemetry import trace

    _propagator.inject(carrier, context=trace.set_span_in_context(span) if span else None)


def inject_metadata(metadata: list[tuple[str, str]]) -> None:
    """Add the current trace context to a gRPC call's metadata."""
    carrier: dict[str, str] = {}
    inject(carrier)
    metadata.extend(carrier.items())


def current_ids() -> tuple[str, str]:
    """The current trace and span ids in hex, for log lines; ("", "") when none."""
    span = current_span()
    if span is None:
        return "", ""
    ids = span.get_span_context()
    return f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
