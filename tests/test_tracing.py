"""Tracing across real processes: a client's span, the thread-service's
RunTurn and turn spans, the model-service's Generate span and the provider
request's span form one trace, and the provider (tests/upstream.py) receives
its `traceparent`. Both services export over OTLP/HTTP to a receiver in the
test (tests/otlp.py), as they would to a collector."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_pair, wait_until
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.rpc import events_of, start, user
from tests.test_metrics import write_model_config
from tests.upstream import TEXT_USAGE, UpstreamServer, text_reply

SERVER, CLIENT = 2, 3  # opentelemetry.proto's Span.SpanKind


@pytest.fixture
def traced(
    tmp_path: Path, upstream: UpstreamServer
) -> Iterator[tuple[OtlpReceiver, ServiceProcess, ServiceProcess]]:
    """Both services with `--tracing otlp`, exporting to a receiver at once
    (a 20 ms batch delay); the model-service also logs JSON."""
    write_model_config(tmp_path / "model-home", upstream)
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "20"}
        model_args = ["--log-format", "json", "--tracing", "otlp"]
        with service_pair(
            tmp_path, ["--tracing", "otlp"], extra_model_args=model_args, env=env
        ) as (model, thread):
            yield receiver, model, thread


def test_a_turn_is_one_trace_from_the_client_to_the_provider(
    traced: tuple[OtlpReceiver, ServiceProcess, ServiceProcess],
    tmp_path: Path,
    upstream: UpstreamServer,
) -> None:
    receiver, model, thread = traced
    upstream.script(text_reply("responses", ["Hel", "lo"]))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with grpc.insecure_channel(thread.address) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        started = start(stub, tmp_path, model="gpt-test")
        client = provider.get_tracer("test-client").start_span("run a turn", kind=SpanKind.CLIENT)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(client))
        carrier["baggage"] = "user=someone"  # W3C baggage: not for the provider
        request = pb.RunTurnRequest(thread_id=started.id, input=[user("hello")])
        events = events_of(stub.RunTurn(request, metadata=list(carrier.items())))
        client.end()
    turn_id = events[0].turn_started.turn_id
    (client_span,) = exporter.get_finished_spans()
    trace_id = f"{client_span.context.trace_id:032x}"

    # Each process exports its spans when they end, in batches of its own:
    # wait for every one this test reads, not only for the last to be written.
    names = (
        "spindle.v1.ThreadService/RunTurn",
        "chat gpt-test",
        "spindle.v1.ModelService/Generate",
        "POST",
    )
    for name in names:
        wait_until(lambda name=name: in_trace(receiver.named(name), trace_id))
    (run_turn,) = in_trace(receiver.named("spindle.v1.ThreadService/RunTurn"), trace_id)
    (turn,) = in_trace(receiver.named("chat gpt-test"), trace_id)
    (generate,) = in_trace(receiver.named("spindle.v1.ModelService/Generate"), trace_id)
    (post,) = in_trace(receiver.named("POST"), trace_id)

    # One chain, parent to child, across both processes and onto the wire.
    assert run_turn.parent_span_id == f"{client_span.context.span_id:016x}"
    assert (run_turn.service, run_turn.kind) == ("thread-service", SERVER)
    assert turn.parent_span_id == run_turn.span_id
    assert (turn.service, turn.kind) == ("thread-service", CLIENT)
    assert generate.parent_span_id == turn.span_id
    assert (generate.service, generate.kind) == ("model-service", SERVER)
    assert post.parent_span_id == generate.span_id
    assert (post.service, post.kind) == ("model-service", CLIENT)
    (sent,) = upstream.requests
    version, sent_trace, sent_parent, flags = sent.headers["traceparent"].split("-")
    assert (version, sent_trace, sent_parent) == ("00", trace_id, post.span_id)
    assert int(flags, 16) & 1  # sampled
    assert "baggage" not in sent.headers

    # What each span says: RPC, GenAI and Spindle attributes, never a message's text.
    assert run_turn.attributes["rpc.grpc.status_code"] == 0
    assert run_turn.attributes["rpc.method"] == "RunTurn"
    window_id = f"{started.id}:0"
    assert turn.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-test",
        "gen_ai.conversation.id": started.id,
        "spindle.thread_id": started.id,
        "spindle.turn_id": turn_id,
        "spindle.window_id": window_id,
        "spindle.prompt_cache_key": started.id,
        "spindle.turn.status": "completed",
        "gen_ai.usage.input_tokens": TEXT_USAGE.input_tokens,
        "gen_ai.usage.cache_read.input_tokens": TEXT_USAGE.cached_input_tokens,
        "gen_ai.usage.output_tokens": TEXT_USAGE.output_tokens,
    }
    assert generate.attributes["gen_ai.provider.name"] == "local"
    assert generate.attributes["gen_ai.request.model"] == "gpt-test"
    assert generate.attributes["spindle.window_id"] == window_id
    assert generate.attributes["gen_ai.usage.output_tokens"] == TEXT_USAGE.output_tokens
    assert post.attributes["http.response.status_code"] == 200
    assert post.attributes["url.full"] == upstream.base_url.rstrip("/") + "/responses"
    for span in (run_turn, turn, generate, post):
        assert "hello" not in json.dumps(span.attributes)

    # The model-service's log line of the request names the trace.
    def generate_lines() -> list[dict[str, str]]:
        lines = [json.loads(line) for line in list(model.log_lines)]
        return [line for line in lines if line["message"].startswith("generate ")]

    wait_until(generate_lines)
    (generate_line,) = generate_lines()
    assert generate_line["trace_id"] == trace_id
    assert generate_line["thread_id"] == started.id


def test_a_failed_provider_request_marks_its_spans(
    traced: tuple[OtlpReceiver, ServiceProcess, ServiceProcess], tmp_path: Path
) -> None:
    """No provider answers (the upstream script is empty: every request gets
    a 500), so each attempt is an error span and the turn's span says how it
    ended."""
    receiver, _, thread = traced
    with grpc.insecure_channel(thread.address) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        started = start(stub, tmp_path, model="gpt-test")
        with pytest.raises(grpc.RpcError) as failed:
            events_of(stub.RunTurn(pb.RunTurnRequest(thread_id=started.id, input=[user("hi")])))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: receiver.named("chat gpt-test") and len(receiver.named("POST")) == 3)
    (turn,) = receiver.named("chat gpt-test")
    assert turn.attributes["spindle.turn.status"] == "failed"
    assert turn.attributes["error.type"] == "UNAVAILABLE"
    assert turn.status_code == 2
    attempts = in_trace(receiver.named("POST"), turn.trace_id)
    assert len(attempts) == 3  # the first try and max_retries = 2
    assert all(post.attributes["error.type"] == "500" for post in attempts)
    assert all(post.status_code == 2 for post in attempts)


def in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace_id]
