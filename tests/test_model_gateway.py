"""The model-service in front of an HTTP provider, end to end through gRPC:
configured from config.toml, it forwards prompt_cache_key and identity
headers unchanged, maps upstream failures to statuses, and closes the
upstream request when the gRPC call ends early; a model no provider serves
is NOT_FOUND. The thread-service behind it records failed turns and keeps
their input, and what its clients read names the hop that failed."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from model_service.providers.http import HttpProvider
from model_service.router import Router
from model_service.settings import ModelServiceSettings
from spindle import convert, settings
from spindle.errors import NotFound
from spindle.model import Usage
from spindle.settings import SettingsError
from spindle.v1 import common_pb2 as c
from spindle.v1 import model_service_pb2 as mpb
from spindle.v1 import thread_service_pb2 as tpb
from tests.harness import LoopThread, Stack, start_stack, wait_until
from tests.rpc import (
    assert_kept_only_input,
    error_details,
    fork,
    model_events,
    only_turn,
    raises_status,
    start,
    turn,
    user,
)
from tests.upstream import (
    Reply,
    UpstreamServer,
    echo_reply,
    error_reply,
    responses_event,
    text_reply,
)


def gateway_settings(
    tmp_path: Path,
    upstream: UpstreamServer,
    extra: str = "",
    *,
    default: str | None = "embedded",
    models: str = "",
    argv: tuple[str, ...] = (),
) -> ModelServiceSettings:
    """The gateway's settings; `default` None leaves default_provider unset."""
    home = tmp_path / "model-home"
    home.mkdir(exist_ok=True)
    default_line = "" if default is None else f"default_provider = {json.dumps(default)}"
    (home / "config.toml").write_text(
        f"""
[model_service]
{default_line}

[model_service.models]
"gpt-test" = "local"
{models}

[model_service.providers.local]
base_url = "{upstream.base_url}"
wire_api = "responses"
api_key_env = "SPINDLE_TEST_KEY"
query_params = {{ api-version = "2026-01-01" }}
extra_body = {{ store = false }}
idle_timeout = 1.0
backoff_initial = 0.01
max_retries = 2
{extra}
"""
    )
    return settings.load(
        ModelServiceSettings,
        ["--config-home", str(home), *argv],
        {"SPINDLE_TEST_KEY": "sk-test-secret-123"},
    )


@contextmanager
def running_gateway(
    loop_thread: LoopThread, tmp_path: Path, model_settings: ModelServiceSettings
) -> Iterator[Stack]:
    os.environ["SPINDLE_TEST_KEY"] = "sk-test-secret-123"
    running = start_stack(loop_thread, tmp_path, model_settings=model_settings)
    try:
        yield running
    finally:
        running.stop()
        del os.environ["SPINDLE_TEST_KEY"]


@pytest.fixture
def gateway(loop_thread: LoopThread, tmp_path: Path, upstream: UpstreamServer) -> Iterator[Stack]:
    with running_gateway(loop_thread, tmp_path, gateway_settings(tmp_path, upstream)) as running:
        yield running


def request(model: str = "gpt-test", text: str = "hi") -> mpb.GenerateRequest:
    return mpb.GenerateRequest(
        model=model,
        prompt_cache_key="root-key",
        thread_id="thread-9",
        window_id="thread-9:2",
        sub_agent_kind="review",
        input=[user(text)],
    )


def test_a_mapped_model_goes_upstream_with_key_and_identity(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    upstream.script(text_reply("responses", ["Hel", "lo"], usage=Usage(2048, 1920, 3)))
    events = model_events(gateway.models.Generate(request()))
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == "Hello"
    usage = events[-1].completed.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (2048, 1920, 3)
    (seen,) = upstream.requests
    assert seen.path == "/v1/responses"
    assert seen.query == {"api-version": "2026-01-01"}
    assert seen.body["prompt_cache_key"] == "root-key"
    assert seen.body["model"] == "gpt-test"
    assert seen.body["store"] is False
    assert seen.headers["authorization"] == "Bearer sk-test-secret-123"
    assert seen.headers["session_id"] == seen.headers["x-spindle-thread-id"] == "thread-9"
    assert seen.headers["x-spindle-window-id"] == "thread-9:2"
    assert seen.headers["x-openai-subagent"] == "review"


def test_other_models_stay_on_the_embedded_provider(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    events = model_events(gateway.models.Generate(request(model="anything-else")))
    assert events[-2].item_done.item.message.text == "echo: hi"
    assert upstream.requests == []


def test_upstream_failures_map_to_statuses_without_the_key(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    upstream.script(
        error_reply(429, "slow down sk-test-secret-123", retry_after="0"),
        error_reply(429, "slow down", retry_after="0"),
        error_reply(429, "slow down", retry_after="0"),
        error_reply(401, "key sk-test-secret-123 is not valid"),
    )
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "HTTP 429: slow down"):
        list(gateway.models.Generate(request()))
    assert len(upstream.requests) == 3  # the first try and max_retries = 2
    with raises_status(grpc.StatusCode.UNAUTHENTICATED, "key [redacted] is not valid") as info:
        list(gateway.models.Generate(request()))
    assert "sk-test-secret" not in info.value.details()


def test_a_stalled_upstream_ends_with_deadline_exceeded(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    reply = text_reply("responses", ["a", "b", "c"])
    upstream.script(Reply(events=reply.events, stall_after=2))
    with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED, "idle_timeout"):
        list(gateway.models.Generate(request()))


def test_ending_the_grpc_call_closes_the_upstream_request(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    reply = text_reply("responses", ["a"] * 50)
    upstream.script(Reply(events=reply.events, event_delay=0.2))
    call = gateway.models.Generate(request())
    next(call)
    call.cancel()
    wait_until(lambda: upstream.requests[0].disconnected.is_set(), timeout=5)
    # The caller's deadline bounds the whole upstream request too.
    upstream.script(Reply(events=reply.events, event_delay=0.2))
    with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
        list(gateway.models.Generate(request(), timeout=0.6))
    wait_until(lambda: upstream.requests[1].disconnected.is_set(), timeout=5)


def test_thread_turns_through_the_provider_carry_the_inherited_key(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    upstream.fallback = echo_reply
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    text = user("question")
    turn(stub, root.id, text)
    child = stub.SpawnThread(fork(root.id, "call_1")).thread
    events = turn(stub, child.id, text)
    assert events[-1].turn_completed.status == tpb.TURN_STATUS_COMPLETED
    parent_call, child_call = upstream.requests
    assert parent_call.body["prompt_cache_key"] == child_call.body["prompt_cache_key"] == root.id
    assert child_call.headers["x-spindle-thread-id"] == child.id
    assert child_call.headers["x-openai-subagent"] == "thread_spawn"


def test_an_upstream_outage_fails_the_turn_and_keeps_the_input(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    upstream.script(*[error_reply(503, "overloaded")] * 3)
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    with raises_status(grpc.StatusCode.UNAVAILABLE, "overloaded"):
        turn(stub, root.id, user("are you there?"))
    assert_kept_only_input(
        stub,
        root.id,
        "are you there?",
        status=tpb.TURN_STATUS_FAILED,
        error_code=grpc.StatusCode.UNAVAILABLE,
    )


def test_a_providers_retry_after_reaches_the_client_and_the_turn_record(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    # Longer than backoff_max: the gateway does not wait; the client may.
    upstream.script(error_reply(429, "slow down", retry_after="30"))
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down") as info:
        turn(stub, root.id, user("now?"))
    reason, metadata, retry, _ = error_details(info.value)
    assert reason == "PROVIDER_ERROR"
    assert (metadata["http_status"], metadata["provider"]) == ("429", "local")
    assert retry == 30.0
    recorded = only_turn(stub, root.id)
    assert recorded.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    kinds = {detail.type_url.rsplit(".", 1)[-1] for detail in recorded.error.details}
    assert kinds == {"ErrorInfo", "RetryInfo"}


@pytest.mark.anyio
async def test_azure_style_key_header(tmp_path: Path, upstream: UpstreamServer) -> None:
    configured = gateway_settings(tmp_path, upstream, 'api_key_header = "api-key"')
    provider = HttpProvider(configured.providers["local"], {"SPINDLE_TEST_KEY": "azure-key-1"})
    upstream.script(text_reply("responses", ["ok"]))
    async for _ in provider.stream(convert.request_from_pb(request())):
        pass
    await provider.aclose()
    (seen,) = upstream.requests
    assert seen.headers["api-key"] == "azure-key-1"
    assert "authorization" not in seen.headers


def test_a_cut_short_answer_fails_the_turn_and_stores_none_of_it(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    # As OpenAI streams it: the partial message is "done", then the response
    # is incomplete.
    partial = text_reply("responses", ["The answer is"]).events[:-1]
    incomplete = responses_event(
        {
            "type": "response.incomplete",
            "response": {"incomplete_details": {"reason": "max_output_tokens"}},
        }
    )
    upstream.script(Reply(events=(*partial, incomplete)))
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED):
        turn(stub, root.id, user("what is it?"))
    assert_kept_only_input(stub, root.id, "what is it?")


def test_bad_tools_and_sub_agent_kinds_are_refused_before_anything_is_recorded(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    text = user("use it")
    for tool, message in [
        (c.Tool(name="has space"), "must be 1 to 64 letters"),
        (c.Tool(name="ok", parameters_json="{not json"), "not JSON"),
        (c.Tool(name="ok", parameters_json="[1]"), "JSON object"),
    ]:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, message):
            turn(stub, root.id, text, tools=[tool])
    assert list(stub.ListTurns(tpb.ListTurnsRequest(thread_id=root.id)).turns) == []
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "sub_agent_kind"):
        stub.SpawnThread(tpb.SpawnThreadRequest(parent_id=root.id, sub_agent_kind="bad\nkind é"))
    assert upstream.requests == []


# Models no provider serves


def test_an_unknown_model_is_not_found_naming_the_configured_models(
    loop_thread: LoopThread,
    tmp_path: Path,
    upstream: UpstreamServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="model_service.requests")
    configured = gateway_settings(tmp_path, upstream, default=None)
    with running_gateway(loop_thread, tmp_path, configured) as stack:
        with raises_status(grpc.StatusCode.NOT_FOUND) as info:
            list(stack.models.Generate(request(model="gpt-tset")))
        assert info.value.details() == (
            'model "gpt-tset" is not served here: the configured models are "gpt-test", '
            'and the embedded provider serves names starting "spindle-"'
        )
        (line,) = [r.getMessage() for r in caplog.records if "model=gpt-tset" in r.getMessage()]
        assert " provider=- " in line and " status=NOT_FOUND " in line
        # The embedded provider's own names, and no name at all, are still served.
        for model in ("spindle-echo", "spindle-anything", ""):
            events = model_events(stack.models.Generate(request(model=model)))
            assert events[-2].item_done.item.message.text == "echo: hi"
        # Through the thread-service: the turn fails and keeps its input.
        stub = stack.threads
        root = start(stub, tmp_path, model="gpt-tset")
        with raises_status(grpc.StatusCode.NOT_FOUND, '"gpt-tset" is not served'):
            turn(stub, root.id, user("hello?"))
        assert_kept_only_input(
            stub,
            root.id,
            "hello?",
            status=tpb.TURN_STATUS_FAILED,
            error_code=grpc.StatusCode.NOT_FOUND,
        )
    assert upstream.requests == []


def test_the_not_found_message_stays_short_and_quotes_names(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    models = "\n".join(f'"model-{i:02d}" = "local"' for i in range(14))
    many = Router.from_settings(
        gateway_settings(tmp_path, upstream, default=None, models=models), {}
    )
    message = router_refusal(many, "evil\nmodel " + "x" * 5000)
    assert "\n" not in message and len(message) < 400
    assert message.startswith('model "evil\\nmodel xxx')
    assert '"gpt-test", "model-00", ' in message and '"model-08" and 5 more,' in message
    # A configured name with a quote and a newline is quoted, JSON-style.
    odd = Router.from_settings(
        gateway_settings(tmp_path, upstream, default=None, models='"a\\"b\\nc" = "local"'), {}
    )
    message = router_refusal(odd, "nope")
    assert "\n" not in message and '"a\\"b\\nc"' in message


def router_refusal(router: Router, model: str) -> str:
    with pytest.raises(NotFound) as info:
        router.provider_name(model)
    return info.value.message


@pytest.mark.parametrize(
    ("default", "argv", "expected"),
    [
        ("embedded", (), "embedded"),  # set explicitly, even to the embedded provider
        ("local", (), "local"),
        (None, ("--default-provider", "embedded"), "embedded"),
    ],
)
def test_an_explicit_default_provider_serves_every_other_name(
    tmp_path: Path,
    upstream: UpstreamServer,
    default: str | None,
    argv: tuple[str, ...],
    expected: str,
) -> None:
    configured = gateway_settings(tmp_path, upstream, default=default, argv=argv)
    router = Router.from_settings(configured, {})
    assert router.provider_name("whatever-7b") == expected
    assert router.provider_name("gpt-test") == "local"


def test_a_default_provider_that_names_no_provider_is_refused(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    with pytest.raises(SettingsError, match="unknown provider 'ghost'"):
        gateway_settings(tmp_path, upstream, default=None, argv=("--default-provider", "ghost"))


# Which hop failed


def test_an_unreachable_provider_is_named_by_the_model_service(
    gateway: Stack, upstream: UpstreamServer
) -> None:
    upstream.stop()
    with raises_status(grpc.StatusCode.UNAVAILABLE) as info:
        list(gateway.models.Generate(request()))
    assert info.value.details() == (
        "provider 'local': cannot connect to the provider: All connection attempts failed"
    )


def test_a_client_reads_that_the_provider_and_not_the_model_service_is_down(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    upstream.stop()
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    with raises_status(grpc.StatusCode.UNAVAILABLE) as info:
        turn(stub, root.id, user("anyone there?"))
    expected = "provider 'local': cannot connect to the provider: All connection attempts failed"
    assert info.value.details() == expected
    assert only_turn(stub, root.id).error.message == expected


def test_an_unreachable_model_service_is_still_named_as_such(
    gateway: Stack, tmp_path: Path
) -> None:
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    gateway.loop.run(gateway.servers[0].stop(0))  # the model-service
    with raises_status(grpc.StatusCode.UNAVAILABLE, "cannot reach the model-service at"):
        turn(stub, root.id, user("anyone there?"))


# Secrets through every hop


def test_a_key_at_the_message_limit_reaches_neither_the_client_nor_the_turn_record(
    gateway: Stack, upstream: UpstreamServer, tmp_path: Path
) -> None:
    key = "sk-test-secret-123"
    stub = gateway.threads
    root = start(stub, tmp_path, model="gpt-test")
    for offset in (480, 485, 488, 490, 495):
        upstream.script(error_reply(401, "." * offset + key + " is not a valid key"))
        with raises_status(grpc.StatusCode.UNAUTHENTICATED) as info:
            turn(stub, root.id, user("hi"))
        turns = stub.ListTurns(tpb.ListTurnsRequest(thread_id=root.id)).turns
        for text in (info.value.details(), turns[-1].error.message):
            assert not any(key[:n] in text for n in range(4, len(key) + 1)), text
