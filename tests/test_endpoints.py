"""A provider with several upstream endpoints (`base_urls`, replicas with their
own prefix caches): every request of a prompt_cache_key reaches one endpoint,
keys spread evenly, a failing endpoint moves only its keys and gets them back,
and the serving endpoint is reported. Three real upstream servers (tests/
upstream.py) record what reaches each one."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest

from model_service.providers.base import Served
from model_service.providers.endpoints import FAILURES_BEFORE_DOWN, Endpoints
from model_service.providers.http import HttpProvider
from model_service.settings import ModelServiceSettings, ProviderSettings
from spindle import settings
from spindle.errors import ErrorCode, ModelError
from spindle.items import Message, Role
from spindle.model import ModelRequest
from spindle.settings import SettingsError
from spindle.v1 import model_service_pb2 as mpb
from tests.harness import LoopThread, start_stack
from tests.rpc import raises_status, user
from tests.upstream import (
    RecordedRequest,
    Reply,
    UpstreamServer,
    echo_reply,
    error_reply,
    text_reply,
)

# 300 keys as the thread-service makes them (thread ids), the same in every run.
KEYS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"spindle-key-{i}")) for i in range(300)]
# The replicas listen on fixed ports below the ephemeral range, so that their
# URLs, and so how KEYS spread over them, are the same in every run: with
# random ports the +-25 % check (a 3 sigma band) would fail about one run in
# 300 by chance. The first free triple is used; each of these, the first 20
# from 28100 and not picked, spreads KEYS 79 to 121 per endpoint.
REPLICA_PORTS = [range(port, port + 3) for port in range(28100, 28160, 3)]


@pytest.fixture
def replicas() -> Iterator[list[UpstreamServer]]:
    for ports in REPLICA_PORTS:
        with contextlib.ExitStack() as stack:
            try:
                servers = [stack.enter_context(UpstreamServer(echo_reply, p)) for p in ports]
            except OSError:
                continue  # taken, by another test run perhaps
            yield servers
            return
    pytest.fail("no free triple of ports for the replicas")


def provider_settings(replicas: list[UpstreamServer], **changes: Any) -> ProviderSettings:
    values: dict[str, Any] = {
        "name": "vllm",
        "base_urls": tuple(server.base_url for server in replicas),
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "idle_timeout": 1.0,
        "max_retries": 2,
        "backoff_initial": 0.01,
        "backoff_max": 1.0,
    }
    return ProviderSettings(**{**values, **changes})


def request(key: str) -> ModelRequest:
    return ModelRequest(
        model="llama",
        instructions="",
        input=(Message(Role.USER, "hi"),),
        prompt_cache_key=key,
        thread_id="thread-1",
        window_id="thread-1:0",
    )


async def serve(provider: HttpProvider, key: str) -> str:
    """Run one call of `key`; the endpoint that served it."""
    served = Served()
    async for _ in provider.stream(request(key), served):
        pass
    return served.endpoint


async def serve_all(provider: HttpProvider, keys: list[str]) -> dict[str, str]:
    return {key: await serve(provider, key) for key in keys}


def keys_seen(server: UpstreamServer) -> list[str]:
    return [r.body["prompt_cache_key"] for r in server.requests]


def by_label(replicas: list[UpstreamServer]) -> dict[str, UpstreamServer]:
    return {server.base_url: server for server in replicas}


def failing(status: int, message: str) -> Any:
    def reply(_: RecordedRequest) -> Reply:
        return error_reply(status, message)

    return reply


# Choosing an endpoint


@pytest.mark.anyio
async def test_every_request_of_a_key_reaches_one_endpoint_and_keys_spread_evenly(
    replicas: list[UpstreamServer],
) -> None:
    provider = HttpProvider(provider_settings(replicas))
    try:
        first = await serve_all(provider, KEYS)
        again = await serve_all(provider, KEYS)
    finally:
        await provider.aclose()
    assert again == first
    for server in replicas:
        # What each server recorded is what the provider reported: both passes.
        mine = [key for key in KEYS if first[key] == server.base_url]
        assert sorted(keys_seen(server)) == sorted(mine * 2)
        assert 75 <= len(mine) <= 125, Counter(first.values())  # a third, within 25 %


@pytest.mark.anyio
async def test_stopping_an_endpoint_moves_only_its_keys(replicas: list[UpstreamServer]) -> None:
    provider = HttpProvider(provider_settings(replicas))
    try:
        before = await serve_all(provider, KEYS)
        stopped = replicas[1]
        stopped.stop()
        after = await serve_all(provider, KEYS)
        later = await serve_all(provider, KEYS)  # stopped is marked down now
    finally:
        await provider.aclose()
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == stopped.base_url}
    assert later == after
    # Its keys spread over both others.
    assert set(after[key] for key in moved) == {replicas[0].base_url, replicas[2].base_url}


@pytest.mark.anyio
async def test_an_endpoint_that_comes_back_gets_its_keys_back(
    replicas: list[UpstreamServer],
) -> None:
    provider = HttpProvider(provider_settings(replicas, endpoint_cooldown=0.2))
    keys = KEYS[:60]
    try:
        before = await serve_all(provider, keys)
        port = replicas[1].port
        replicas[1].stop()
        during = await serve_all(provider, keys)
        with UpstreamServer(echo_reply, port=port) as back:
            await anyio.sleep(0.25)  # the cooldown passes
            after = await serve_all(provider, keys)
            assert sorted(keys_seen(back)) == sorted(k for k in keys if before[k] == back.base_url)
    finally:
        await provider.aclose()
    assert after == before
    assert replicas[1].base_url not in during.values()


def test_rendezvous_order_is_stable_and_a_new_endpoint_takes_only_its_own_keys() -> None:
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 4)]
    three = Endpoints("p", urls, "/responses", cooldown=10)
    reordered = Endpoints("p", list(reversed(urls)), "/responses", cooldown=10)
    four = Endpoints("p", [*urls, "http://10.0.0.4:8000/v1"], "/responses", cooldown=10)
    for key in KEYS:
        first = three.order(key)[0].label
        assert reordered.order(key)[0].label == first  # the list's order does not matter
        assert four.order(key)[0].label in (first, "http://10.0.0.4:8000/v1")
    gained = sum(four.order(key)[0].label.endswith(".4:8000/v1") for key in KEYS)
    assert 45 <= gained <= 105  # about a quarter of the keys


def test_endpoint_labels_hide_credentials() -> None:
    endpoints = Endpoints("p", ["https://user:pa55word@llm.internal:8443/v1/"], "/chat", 10)
    (endpoint,) = endpoints.all
    assert endpoint.label == "https://llm.internal:8443/v1"
    assert str(endpoint.url) == "https://user:pa55word@llm.internal:8443/v1/chat"


# Failing over


@pytest.mark.anyio
async def test_a_5xx_before_the_first_event_moves_on_at_once(
    replicas: list[UpstreamServer], caplog: pytest.LogCaptureFixture
) -> None:
    provider = HttpProvider(provider_settings(replicas))
    key = KEYS[0]
    first, second, third = (by_label(replicas)[e.label] for e in provider.endpoints.order(key))
    # A single endpoint would wait out the Retry-After; a replica need not.
    first.script(error_reply(503, "overloaded", retry_after="1"))
    started = time.monotonic()
    try:
        assert await serve(provider, key) == second.base_url
    finally:
        await provider.aclose()
    assert time.monotonic() - started < 0.5
    assert (len(first.requests), len(second.requests), len(third.requests)) == (1, 1, 0)
    assert f"HTTP 503: overloaded; trying endpoint {second.base_url}" in caplog.text


@pytest.mark.anyio
async def test_a_stream_cut_before_its_first_event_moves_on_and_one_cut_later_does_not(
    replicas: list[UpstreamServer],
) -> None:
    provider = HttpProvider(provider_settings(replicas))
    key = KEYS[4]
    first, second, third = (by_label(replicas)[e.label] for e in provider.endpoints.order(key))
    hello = text_reply("responses", ["Hel", "lo"])
    # response.created and response.in_progress give the caller nothing yet.
    first.script(dataclasses.replace(hello, cut_after=2))
    try:
        assert await serve(provider, key) == second.base_url
        # One failure does not mark it down: the key's next call goes there again.
        first.script(dataclasses.replace(hello, cut_after=4))  # after the first delta
        with pytest.raises(ModelError, match="connection to the provider failed"):
            await serve(provider, key)
    finally:
        await provider.aclose()
    # The caller had a delta of the second call, so no other endpoint was tried.
    assert (len(first.requests), len(second.requests), len(third.requests)) == (2, 1, 0)


@pytest.mark.anyio
async def test_a_429_waits_on_the_same_endpoint(replicas: list[UpstreamServer]) -> None:
    provider = HttpProvider(provider_settings(replicas))
    key = KEYS[1]
    first, second, third = (by_label(replicas)[e.label] for e in provider.endpoints.order(key))
    first.script(error_reply(429, "slow down", retry_after="0.2"))
    try:
        assert await serve(provider, key) == first.base_url
    finally:
        await provider.aclose()
    one, two = first.requests
    assert two.received_at - one.received_at >= 0.19
    assert second.requests == third.requests == []


@pytest.mark.anyio
async def test_an_endpoint_that_keeps_failing_is_passed_over_for_a_while(
    replicas: list[UpstreamServer],
) -> None:
    provider = HttpProvider(provider_settings(replicas))
    sick = replicas[0]
    sick.fallback = failing(500, "internal error")
    keys = [key for key in KEYS if provider.endpoints.order(key)[0].label == sick.base_url]
    try:
        served = await serve_all(provider, keys[:10])
    finally:
        await provider.aclose()
    # Three failures in a row mark it down; the keys after those skip it.
    assert keys_seen(sick) == keys[:FAILURES_BEFORE_DOWN]
    assert sick.base_url not in served.values()


@pytest.mark.anyio
async def test_when_every_endpoint_fails_each_round_tries_all_then_backs_off(
    replicas: list[UpstreamServer],
) -> None:
    for server in replicas:
        server.fallback = failing(503, f"replica {server.port} is overloaded")
    provider = HttpProvider(provider_settings(replicas, max_retries=1))
    served = Served()
    try:
        with pytest.raises(ModelError) as info:
            async for _ in provider.stream(request(KEYS[2]), served):
                pass
    finally:
        await provider.aclose()
    last = by_label(replicas)[served.endpoint]  # the endpoint tried last, whose error it is
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert info.value.message == f"provider 'vllm': HTTP 503: replica {last.port} is overloaded"
    assert [len(server.requests) for server in replicas] == [2, 2, 2]  # two rounds of three


# Settings


def load(tmp_path: Path, table: str, environ: dict[str, str] | None = None) -> ModelServiceSettings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f"[model_service.providers.vllm]\n{table}\n")
    return settings.load(ModelServiceSettings, ["--config-home", str(home)], environ or {})


def test_base_urls_from_toml_and_from_the_environment(tmp_path: Path) -> None:
    toml = 'base_urls = ["http://a:8000/v1", "http://b:8000/v1"]\nwire_api = "chat"'
    assert load(tmp_path, toml).providers["vllm"].endpoints == (
        "http://a:8000/v1",
        "http://b:8000/v1",
    )
    # Either variable replaces the file's endpoints, whichever form they take.
    replaced = load(
        tmp_path, toml, {"SPINDLE_PROVIDER_VLLM_BASE_URLS": " http://c/v1 , http://d/v1,"}
    )
    assert replaced.providers["vllm"].base_urls == ("http://c/v1", "http://d/v1")
    one = load(tmp_path, toml, {"SPINDLE_PROVIDER_VLLM_BASE_URL": "http://e/v1"})
    assert one.providers["vllm"].endpoints == ("http://e/v1",)
    many = load(
        tmp_path, 'base_url = "http://a/v1"', {"SPINDLE_PROVIDER_VLLM_BASE_URLS": "http://f"}
    )
    assert (many.providers["vllm"].base_url, many.providers["vllm"].base_urls) == (
        "",
        ("http://f",),
    )


@pytest.mark.parametrize(
    ("table", "environ", "message"),
    [
        ('base_url = "http://a"\nbase_urls = ["http://b"]', {}, "base_url or base_urls, not both"),
        ("base_urls = []", {}, "at least one URL"),
        ('base_urls = "http://a"', {}, "base_urls must be a list"),
        ('base_urls = ["http://a", 3]', {}, "base_urls must be a list"),
        ('base_urls = ["http://a", "ftp://b"]', {}, "not 'ftp://b'"),
        ('base_urls = ["http://a/v1", "http://a/v1/"]', {}, "lists an endpoint twice"),
        ('base_url = "http://a"\nendpoint_cooldown = -1', {}, "endpoint_cooldown"),
        (
            'base_url = "http://a"',
            {
                "SPINDLE_PROVIDER_VLLM_BASE_URL": "http://b",
                "SPINDLE_PROVIDER_VLLM_BASE_URLS": "http://c",
            },
            "not both",
        ),
        ('base_url = "http://a"', {"SPINDLE_PROVIDER_VLLM_BASE_URLS": " , "}, "at least one URL"),
    ],
)
def test_bad_endpoint_settings_are_refused(
    tmp_path: Path, table: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, table, environ)
    assert message in str(info.value)


# Through the model-service


def test_the_serving_endpoint_is_in_completed_and_in_the_log_line(
    loop_thread: LoopThread,
    tmp_path: Path,
    replicas: list[UpstreamServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="model_service.requests")
    home = tmp_path / "model-home"
    home.mkdir()
    urls = ", ".join(f'"{server.base_url}"' for server in replicas)
    (home / "config.toml").write_text(
        f'[model_service.models]\n"llama" = "vllm"\n\n'
        f'[model_service.providers.vllm]\nbase_urls = [{urls}]\nwire_api = "chat"\n'
        "max_retries = 1\nbackoff_initial = 0.01\n"
    )
    stack = start_stack(
        loop_thread,
        tmp_path,
        model_settings=settings.load(ModelServiceSettings, ["--config-home", str(home)], {}),
    )
    try:
        message = mpb.GenerateRequest(
            model="llama",
            prompt_cache_key=KEYS[3],
            thread_id="thread-3",
            window_id="thread-3:0",
            input=[user("hi")],
        )
        completed = list(stack.models.Generate(message))[-1].events[-1].completed
        serving = [server for server in replicas if server.requests]
        assert [server.base_url for server in serving] == [completed.endpoint]
        for server in replicas:
            server.stop()
        with raises_status(grpc.StatusCode.UNAVAILABLE, "provider 'vllm': cannot connect"):
            list(stack.models.Generate(message))
    finally:
        stack.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "model_service.requests"]
    assert f"provider=vllm endpoint={completed.endpoint} input_items=1 status=OK" in lines[0]
    assert " endpoint=http://127.0.0.1:" in lines[1] and "status=UNAVAILABLE" in lines[1]
