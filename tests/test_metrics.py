"""Prometheus metrics, scraped over HTTP from both services as real processes
after real turns: each counter moves by what the turns did, and nothing in
them names a thread or says what a message said."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_service.settings import ModelServiceSettings
from spindle import settings
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_pair, wait_until
from tests.rpc import events_of, raises_status, start, turn, user
from tests.upstream import TEXT_USAGE, UpstreamServer, error_reply, text_reply
from thread_service.settings import ThreadServiceSettings

Sample = tuple[str, frozenset[tuple[str, str]]]
# Long enough (over 1,024 tokens) that the embedded provider caches its prefix.
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 150
SECRET_TEXT = "a message nobody may read in the metrics"


def scrape(url: str) -> dict[Sample, float]:
    """Every sample the endpoint serves, by name and labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def write_model_config(home: Path, upstream: UpstreamServer) -> None:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f"""
[model_service.models]
"gpt-test" = "local"

[model_service.providers.local]
base_url = "{upstream.base_url}"
backoff_initial = 0.01
max_retries = 2
"""
    )


@pytest.fixture
def services(
    tmp_path: Path, upstream: UpstreamServer
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A model-service (with an HTTP provider for `gpt-test`) and a
    thread-service, each serving metrics on a port of its own."""
    write_model_config(tmp_path / "model-home", upstream)
    metrics = ["--metrics-listen", "127.0.0.1:0"]
    with service_pair(tmp_path, metrics, extra_model_args=metrics) as pair:
        yield pair


def test_turns_and_model_calls_move_the_metrics_by_what_they_did(
    services: tuple[ServiceProcess, ServiceProcess], tmp_path: Path, upstream: UpstreamServer
) -> None:
    model, thread = services
    thread_url, model_url = thread.metrics_url(), model.metrics_url()
    thread_before, model_before = scrape(thread_url), scrape(model_url)
    upstream.script(error_reply(503, "busy"), text_reply("responses", ["Hel", "lo"]))

    with grpc.insecure_channel(thread.address) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        echo = start(stub, tmp_path)
        # Two completed turns; the second finds the first's prompt in the cache.
        reported = [turn(stub, echo.id, user(LONG_TEXT))[-1].turn_completed.usage]
        reported.append(turn(stub, echo.id, user(LONG_TEXT))[-1].turn_completed.usage)
        assert reported[1].cached_input_tokens > 0
        with raises_status(grpc.StatusCode.UNAVAILABLE):
            turn(stub, echo.id, user("/fail UNAVAILABLE the model is down"))
        interrupted = interrupt_after_first_delta(stub, echo.id)
        assert interrupted == pb.TURN_STATUS_INTERRUPTED
        upstream_thread = start(stub, tmp_path, model="gpt-test")
        turn(stub, upstream_thread.id, user(SECRET_TEXT))
        unlisted = start(stub, tmp_path, model="spindle-unlisted-name")
        turn(stub, unlisted.id, user("hi"))

    # The model-service records a cancelled call as it unwinds: wait for it.
    wait_until(
        lambda: (
            moved(
                model_before,
                scrape(model_url),
                "spindle_model_requests_total",
                provider="embedded",
                model="spindle-echo",
                code="CANCELLED",
            )
            == 1
        )
    )
    wait_until(lambda: value(scrape(thread_url), "spindle_turns_running") == 0)
    thread_after, model_after = scrape(thread_url), scrape(model_url)

    def thread_moved(name: str, **labels: str) -> float:
        return moved(thread_before, thread_after, name, **labels)

    def model_moved(name: str, **labels: str) -> float:
        return moved(model_before, model_after, name, **labels)

    # Turns by how they ended; every turn that streamed text timed its first token.
    assert thread_moved("spindle_turns_total", status="completed") == 4
    assert thread_moved("spindle_turns_total", status="failed") == 1
    assert thread_moved("spindle_turns_total", status="interrupted") == 1
    assert thread_moved("spindle_turn_time_to_first_token_seconds_count") == 5
    # RPCs by method and status code, timed.
    service = "spindle.v1.ThreadService"
    assert (
        thread_moved("spindle_rpc_requests_total", service=service, method="RunTurn", code="OK")
        == 5
    )
    assert (
        thread_moved(
            "spindle_rpc_requests_total", service=service, method="RunTurn", code="UNAVAILABLE"
        )
        == 1
    )
    assert (
        thread_moved(
            "spindle_rpc_requests_total", service=service, method="InterruptTurn", code="OK"
        )
        == 1
    )
    assert thread_moved("spindle_rpc_duration_seconds_count", service=service, method="RunTurn")
    assert thread_moved("spindle_store_operation_duration_seconds_count", operation="begin_turn")
    assert (
        thread_moved("spindle_store_operation_duration_seconds_count", operation="finish_turn") == 6
    )

    # Model requests by provider, bounded model name and status.
    def requests(provider: str, model_name: str, code: str) -> float:
        return model_moved(
            "spindle_model_requests_total", provider=provider, model=model_name, code=code
        )

    assert requests("embedded", "spindle-echo", "OK") == 2
    assert requests("embedded", "spindle-echo", "UNAVAILABLE") == 1
    assert requests("embedded", "spindle-echo", "CANCELLED") == 1
    assert requests("local", "gpt-test", "OK") == 1
    assert requests("embedded", "other", "OK") == 1  # a caller's name, not a label
    echo_labels = {"provider": "embedded", "model": "spindle-echo"}
    assert model_moved("spindle_model_request_duration_seconds_count", **echo_labels) == 4
    # Tokens are what the turns reported, so the cached share can be graphed.
    assert model_moved("spindle_model_input_tokens_total", **echo_labels) == sum(
        usage.input_tokens for usage in reported
    )
    assert model_moved("spindle_model_cached_input_tokens_total", **echo_labels) == sum(
        usage.cached_input_tokens for usage in reported
    )
    assert model_moved("spindle_model_output_tokens_total", **echo_labels) == sum(
        usage.output_tokens for usage in reported
    )
    local = {"provider": "local", "model": "gpt-test"}
    assert model_moved("spindle_model_input_tokens_total", **local) == TEXT_USAGE.input_tokens
    assert model_moved("spindle_model_output_tokens_total", **local) == TEXT_USAGE.output_tokens
    # The upstream's 503 was retried once.
    assert model_moved("spindle_upstream_errors_total", provider="local", http_status="503") == 1
    assert model_moved("spindle_upstream_retries_total", provider="local") == 1
    assert (
        model_moved(
            "spindle_rpc_requests_total",
            service="spindle.v1.ModelService",
            method="Generate",
            code="OK",
        )
        == 4
    )
    # Tracing is off: nothing went upstream about it.
    assert all("traceparent" not in request.headers for request in upstream.requests)

    # Nothing in either endpoint names a thread or repeats what was said.
    for url in (thread_url, model_url):
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for secret in (echo.id, upstream_thread.id, SECRET_TEXT, "quick brown fox"):
            assert secret not in text


def interrupt_after_first_delta(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> int:
    """Run a slow turn, interrupt it once its first text arrived; how it ended."""
    stream = stub.RunTurn(
        pb.RunTurnRequest(thread_id=thread_id, input=[user("/slow 30 a slow answer in parts")])
    )
    seen: list[pb.TurnEvent] = []
    for response in stream:
        seen.extend(response.events)
        if any(event.HasField("text_delta") for event in seen):
            break
    turn_id = seen[0].turn_started.turn_id
    with ThreadPoolExecutor(1) as pool:
        rest = pool.submit(lambda: events_of(stream))
        stub.InterruptTurn(pb.InterruptTurnRequest(thread_id=thread_id, turn_id=turn_id))
        events = rest.result(timeout=30)
    status: int = events[-1].turn_completed.status
    return status


@pytest.mark.parametrize("cls", [ThreadServiceSettings, ModelServiceSettings])
def test_metrics_on_a_public_address_need_saying_so(
    cls: type[settings.ServiceSettings], tmp_path: Path
) -> None:
    home = ["--config-home", str(tmp_path)]
    with pytest.raises(settings.SettingsError, match="metrics_public"):
        settings.load(cls, [*home, "--metrics-listen", "0.0.0.0:9464"], {})
    public = settings.load(cls, [*home, "--metrics-listen", "0.0.0.0:9464", "--metrics-public"], {})
    assert public.metrics_listen == "0.0.0.0:9464"
    assert settings.load(cls, home, {"SPINDLE_METRICS_LISTEN": "127.0.0.1:9464"}).metrics_listen
    assert settings.load(cls, home, {}).metrics_listen == ""  # off by default
    with pytest.raises(settings.SettingsError, match="HOST:PORT"):
        settings.load(cls, [*home, "--metrics-listen", "9464"], {})


def test_a_busy_metrics_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        model = ServiceProcess(
            "model_service",
            ["--config-home", str(tmp_path), "--metrics-listen", f"127.0.0.1:{port}"],
        )
        assert model.proc.wait(timeout=30) == 2
        model.stop()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in model.log_text()
