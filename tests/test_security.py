"""Authentication, tenants, trust roots, TLS and rate limits, through real
servers: who may call, whose threads they see, where they may work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from model_service.settings import ModelServiceSettings
from spindle.auth import main, new_token, token_hash
from spindle.v1 import common_pb2 as c
from spindle.v1 import model_service_pb2 as mpb
from spindle.v1 import model_service_pb2_grpc as mpb_grpc
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.certs import Authority
from tests.harness import LoopThread, ServiceProcess, Stack, service_pair, start_stack, wait_until
from tests.rpc import events_of, fork, raises_status, user
from thread_service.access import model_cache_key

ALICE, BOB, CAROL = new_token(), new_token(), new_token()


def write_principals(path: Path, work: Path, *extra: str) -> Path:
    path.write_text(
        f"""
[principals.alice]
tenant = "acme"
token_sha256 = ["{token_hash(ALICE)}"]
trust_roots = ["{work / "acme"}"]

[principals.carol]
tenant = "acme"
token_sha256 = ["{token_hash(CAROL)}"]
trust_roots = ["{work / "acme"}"]

[principals.bob]
tenant = "beta"
token_sha256 = ["{token_hash(BOB)}"]
trust_roots = ["{work / "beta"}"]
"""
        + "\n".join(extra)
    )
    return path


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def secured(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    for tenant in ("acme", "beta"):
        (tmp_path / "work" / tenant).mkdir(parents=True)
    principals = write_principals(tmp_path / "principals.toml", tmp_path / "work")
    running = start_stack(loop_thread, tmp_path, auth_file=str(principals))
    yield running
    running.stop()


def start_as(stub: pb_grpc.ThreadServiceStub, token: str, cwd: Path) -> pb.Thread:
    response = stub.StartThread(pb.StartThreadRequest(cwd=str(cwd)), metadata=bearer(token))
    thread: pb.Thread = response.thread
    return thread


def test_calls_without_valid_credentials_are_unauthenticated(
    secured: Stack, tmp_path: Path
) -> None:
    stub = secured.threads
    request = pb.StartThreadRequest(cwd=str(tmp_path / "work" / "acme"))
    for metadata, fragment in [
        ([], "credentials are required"),
        (bearer("spx_not-a-token"), "not valid"),
        ([("authorization", f"Basic {ALICE}")], "Bearer <token>"),
        ([("authorization", "Bearer ")], "Bearer <token>"),
    ]:
        with raises_status(grpc.StatusCode.UNAUTHENTICATED, fragment) as info:
            stub.StartThread(request, metadata=metadata)
        status = rpc_status.from_call(info.value)
        assert status is not None
        reason = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(reason)
        assert reason.reason in ("CREDENTIALS_REQUIRED", "CREDENTIALS_INVALID")
        assert reason.domain == "spindle.v1"
    # Health and reflection answer everyone: probes and tools need them.
    channel = grpc.insecure_channel(f"127.0.0.1:{secured.thread_port}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_tenants_see_only_their_own_threads(secured: Stack, tmp_path: Path) -> None:
    stub = secured.threads
    acme = tmp_path / "work" / "acme"
    root = start_as(stub, ALICE, acme)
    list(
        stub.RunTurn(
            pb.RunTurnRequest(thread_id=root.id, input=[user("hi")]), metadata=bearer(ALICE)
        )
    )
    # Carol shares Alice's tenant: she sees and forks the thread.
    assert stub.GetThread(pb.GetThreadRequest(thread_id=root.id), metadata=bearer(CAROL))
    child = stub.SpawnThread(fork(root.id), metadata=bearer(CAROL)).thread
    assert child.prompt_cache_key == root.id

    alices_turn = (
        stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id), metadata=bearer(ALICE)).turns[0].id
    )
    # Bob, of another tenant, is told the thread does not exist, whatever he asks.
    calls: list[Callable[[], object]] = [
        lambda: stub.GetThread(pb.GetThreadRequest(thread_id=root.id), metadata=bearer(BOB)),
        lambda: stub.ListThreadItems(
            pb.ListThreadItemsRequest(thread_id=root.id), metadata=bearer(BOB)
        ),
        lambda: stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id), metadata=bearer(BOB)),
        lambda: stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id), metadata=bearer(BOB)),
        lambda: stub.SpawnThread(fork(root.id), metadata=bearer(BOB)),
        lambda: stub.ResumeThread(pb.ResumeThreadRequest(thread_id=root.id), metadata=bearer(BOB)),
        lambda: stub.ArchiveThread(
            pb.ArchiveThreadRequest(thread_id=root.id), metadata=bearer(BOB)
        ),
        lambda: stub.InterruptTurn(
            pb.InterruptTurnRequest(thread_id=root.id, turn_id=alices_turn), metadata=bearer(BOB)
        ),
        lambda: list(
            stub.RunTurn(
                pb.RunTurnRequest(thread_id=root.id, input=[user("x")]), metadata=bearer(BOB)
            )
        ),
        lambda: stub.ListThreads(pb.ListThreadsRequest(parent_id=root.id), metadata=bearer(BOB)),
    ]
    for call in calls:
        with raises_status(grpc.StatusCode.NOT_FOUND, "does not exist"):
            call()
    assert list(stub.ListThreads(pb.ListThreadsRequest(), metadata=bearer(BOB)).threads) == []
    seen = stub.ListThreads(pb.ListThreadsRequest(page_size=1), metadata=bearer(ALICE))
    assert [t.id for t in seen.threads] == [root.id]
    # A page token is bound to its tenant's listing.
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "does not belong to this listing"):
        stub.ListThreads(
            pb.ListThreadsRequest(page_token=seen.next_page_token), metadata=bearer(BOB)
        )
    # Nothing changed for Alice: not archived, no turn of Bob's.
    thread = stub.GetThread(pb.GetThreadRequest(thread_id=root.id), metadata=bearer(ALICE))
    assert thread.thread.status == pb.THREAD_STATUS_ACTIVE
    turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id), metadata=bearer(ALICE))
    assert len(turns.turns) == 1


def test_model_requests_carry_keys_scoped_to_the_tenant(
    secured: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub = secured.threads
    caplog.set_level(logging.INFO, logger="model_service.requests")
    root = start_as(stub, ALICE, tmp_path / "work" / "acme")
    list(
        stub.RunTurn(
            pb.RunTurnRequest(thread_id=root.id, input=[user("hi")]), metadata=bearer(ALICE)
        )
    )
    child = stub.SpawnThread(fork(root.id), metadata=bearer(ALICE)).thread
    list(
        stub.RunTurn(
            pb.RunTurnRequest(thread_id=child.id, input=[user("hi")]), metadata=bearer(ALICE)
        )
    )
    scoped = model_cache_key("acme", root.id)
    assert scoped != root.id and len(scoped) <= 64
    wait_until(lambda: sum("prompt_cache_key=" in r.getMessage() for r in caplog.records) == 2)
    keys = [
        r.getMessage().split("prompt_cache_key=")[1].split()[0]
        for r in caplog.records
        if "prompt_cache_key=" in r.getMessage()
    ]
    assert keys == [scoped, scoped]  # the fork still shares its parent's key
    assert model_cache_key("beta", root.id) != scoped


def test_start_thread_only_under_the_callers_trust_roots(secured: Stack, tmp_path: Path) -> None:
    stub = secured.threads
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "work" / "acme" / "escape").symlink_to(outside)
    answers = set()
    for cwd in [
        "/etc",
        "/nonexistent/path",
        str(outside),
        str(tmp_path / "work" / "beta"),
        str(tmp_path / "work" / "acme" / "escape"),
        str(tmp_path / "work" / "acme" / ".." / "beta"),
    ]:
        with raises_status(grpc.StatusCode.PERMISSION_DENIED, "outside the folders") as info:
            stub.StartThread(pb.StartThreadRequest(cwd=cwd), metadata=bearer(ALICE))
        answers.add(info.value.details())
    # The same words whether the path exists or not.
    assert len(answers) == 1
    assert not (tmp_path / "home" / "config.toml").exists()
    inside = tmp_path / "work" / "acme" / "project"
    inside.mkdir()
    assert start_as(stub, ALICE, inside).trust.project_path == str(inside)


def test_principals_reload_so_tokens_rotate_without_a_restart(
    secured: Stack, tmp_path: Path
) -> None:
    stub = secured.threads
    acme = tmp_path / "work" / "acme"
    principals = tmp_path / "principals.toml"
    start_as(stub, ALICE, acme)
    successor = new_token()
    text = principals.read_text()
    principals.write_text(
        text.replace(
            f'["{token_hash(ALICE)}"]', f'["{token_hash(ALICE)}", "{token_hash(successor)}"]'
        )
    )
    wait_until(lambda: _accepted(stub, successor, acme), timeout=5)
    assert _accepted(stub, ALICE, acme)  # both during the change-over
    principals.write_text(text.replace(token_hash(ALICE), token_hash(successor)))
    wait_until(lambda: not _accepted(stub, ALICE, acme), timeout=5)
    assert _accepted(stub, successor, acme)
    # A broken edit keeps the last good principals.
    principals.write_text("[principals.alice\n")
    time.sleep(1.2)
    assert _accepted(stub, successor, acme)


def _accepted(stub: pb_grpc.ThreadServiceStub, token: str, cwd: Path) -> bool:
    try:
        stub.ListThreads(pb.ListThreadsRequest(), metadata=bearer(token))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
        return False
    return True


def test_a_per_principal_request_rate_is_kept(loop_thread: LoopThread, tmp_path: Path) -> None:
    (tmp_path / "work" / "acme").mkdir(parents=True)
    (tmp_path / "work" / "beta").mkdir(parents=True)
    principals = write_principals(tmp_path / "principals.toml", tmp_path / "work")
    running = start_stack(loop_thread, tmp_path, auth_file=str(principals), rate_limit_requests=3.0)
    try:
        stub = running.threads
        for _ in range(3):
            stub.ListThreads(pb.ListThreadsRequest(), metadata=bearer(ALICE))
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit") as info:
            stub.ListThreads(pb.ListThreadsRequest(), metadata=bearer(ALICE))
        status = rpc_status.from_call(info.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 20
        # Another principal has a bucket of its own.
        stub.ListThreads(pb.ListThreadsRequest(), metadata=bearer(BOB))
    finally:
        running.stop()


def test_model_tokens_a_minute_are_limited_per_principal(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    (tmp_path / "work" / "acme").mkdir(parents=True)
    (tmp_path / "work" / "beta").mkdir(parents=True)
    principals = write_principals(tmp_path / "principals.toml", tmp_path / "work")
    running = start_stack(loop_thread, tmp_path, auth_file=str(principals), rate_limit_tokens=30.0)
    try:
        stub = running.threads
        root = start_as(stub, ALICE, tmp_path / "work" / "acme")
        turn = pb.RunTurnRequest(thread_id=root.id, input=[user("a question of some words")])
        list(stub.RunTurn(turn, metadata=bearer(ALICE)))  # uses more than 30 tokens
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "model tokens"):
            list(stub.RunTurn(turn, metadata=bearer(ALICE)))
        turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id), metadata=bearer(ALICE))
        assert len(turns.turns) == 1  # the refused turn recorded nothing
    finally:
        running.stop()


def test_a_non_loopback_listener_needs_auth_or_the_insecure_flag(tmp_path: Path) -> None:
    refused = ServiceProcess(
        "model_service", ["--config-home", str(tmp_path), "--listen", "0.0.0.0:0"]
    )
    assert refused.proc.wait(30) == 1
    refused.stop()
    assert "needs authentication" in refused.log_text()
    assert "--insecure-no-auth" in refused.log_text()
    allowed = ServiceProcess(
        "model_service",
        ["--config-home", str(tmp_path), "--listen", "0.0.0.0:0", "--insecure-no-auth"],
    )
    try:
        assert allowed.port > 0
        wait_until(lambda: "without TLS" in allowed.log_text())
    finally:
        allowed.stop()


# TLS


def test_tls_mutual_tls_principals_and_certificate_reload(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    ca = Authority(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    alice_cert = ca.issue("alice.acme.test", server=False)
    (tmp_path / "work" / "acme").mkdir(parents=True)
    (tmp_path / "work" / "beta").mkdir(parents=True)
    principals = write_principals(
        tmp_path / "principals.toml",
        tmp_path / "work",
        '[principals.alice-cert]\ntenant = "acme"\nclient_cert_names = ["alice.acme.test"]\n'
        f'trust_roots = ["{tmp_path / "work" / "acme"}"]',
    )
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    tls += ["--tls-client-ca", ca.path.as_posix()]
    with service_pair(tmp_path, ["--auth-file", str(principals), *tls]) as (_, thread):
        target = f"localhost:{thread.port}"
        alice_creds = grpc.ssl_channel_credentials(
            ca.path.read_bytes(), alice_cert.key.read_bytes(), alice_cert.cert.read_bytes()
        )
        with grpc.secure_channel(target, alice_creds) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            started = stub.StartThread(
                pb.StartThreadRequest(cwd=str(tmp_path / "work" / "acme"))
            ).thread
            # The certificate named a principal of tenant acme; Alice's token agrees.
            stub.GetThread(pb.GetThreadRequest(thread_id=started.id), metadata=bearer(ALICE))
            with raises_status(grpc.StatusCode.NOT_FOUND):
                stub.GetThread(pb.GetThreadRequest(thread_id=started.id), metadata=bearer(BOB))
        # No client certificate, or plaintext: no connection at all.
        no_cert = grpc.ssl_channel_credentials(ca.path.read_bytes())
        for channel in (grpc.secure_channel(target, no_cert), grpc.insecure_channel(target)):
            with channel, raises_status(grpc.StatusCode.UNAVAILABLE):
                pb_grpc.ThreadServiceStub(channel).ListThreads(
                    pb.ListThreadsRequest(), metadata=bearer(ALICE), timeout=5
                )
        # A renewed server certificate from a new CA is served without a restart.
        renewed_ca = Authority(tmp_path / "pki2", "Renewed CA")
        renewed = renewed_ca.issue("localhost", server=True, stem="renewed")
        server.key.write_bytes(renewed.key.read_bytes())
        server.cert.write_bytes(renewed.cert.read_bytes())
        trusting_new = grpc.ssl_channel_credentials(
            renewed_ca.path.read_bytes(), alice_cert.key.read_bytes(), alice_cert.cert.read_bytes()
        )
        with grpc.secure_channel(target, trusting_new) as channel:
            assert pb_grpc.ThreadServiceStub(channel).ListThreads(
                pb.ListThreadsRequest(), timeout=10
            )


def test_the_model_service_serves_only_the_thread_service(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """Mutual TLS between the services, and a token: a caller with neither is refused."""
    ca = Authority(tmp_path / "pki")
    model_cert = ca.issue("localhost", server=True, stem="model")
    client = ca.issue("thread-service", server=False)
    service_token = new_token()
    token_file = tmp_path / "service-token"
    token_file.write_text(service_token + "\n")
    model_principals = tmp_path / "model-principals.toml"
    model_principals.write_text(
        f'[principals.thread-service]\ntoken_sha256 = ["{token_hash(service_token)}"]\n'
        'client_cert_names = ["thread-service"]\n'
    )
    model_settings = ModelServiceSettings(
        config_home=tmp_path / "model-home",
        auth_file=str(model_principals),
        tls_cert=str(model_cert.cert),
        tls_key=str(model_cert.key),
        tls_client_ca=str(ca.path),
    )
    running = start_stack(
        loop_thread,
        tmp_path,
        model_settings=model_settings,
        model_service_tls_ca=str(ca.path),
        model_service_tls_cert=str(client.cert),
        model_service_tls_key=str(client.key),
        model_service_token_file=str(token_file),
    )
    try:
        # start_stack names the model-service 127.0.0.1, which the certificate covers.
        stub = running.threads
        root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
        events = events_of(stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[user("hi")])))
        assert events[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
        request = mpb.GenerateRequest(
            model="spindle-echo",
            input=[c.Item(message=c.Message(role=c.ROLE_USER, text="x"))],
            prompt_cache_key="k",
            thread_id="t",
        )
        # A TLS client with a certificate the principals do not name, without a token.
        stranger = ca.issue("stranger", server=False)
        creds = grpc.ssl_channel_credentials(
            ca.path.read_bytes(), stranger.key.read_bytes(), stranger.cert.read_bytes()
        )
        with (
            grpc.secure_channel(f"127.0.0.1:{running.model_port}", creds) as channel,
            raises_status(grpc.StatusCode.UNAUTHENTICATED, "names no principal"),
        ):
            list(mpb_grpc.ModelServiceStub(channel).Generate(request, timeout=10))
    finally:
        running.stop()


def test_a_refused_service_token_fails_the_turn_as_the_services_fault(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    model_principals = tmp_path / "model-principals.toml"
    model_principals.write_text(
        f'[principals.thread-service]\ntoken_sha256 = ["{token_hash(new_token())}"]\n'
    )
    wrong = tmp_path / "wrong-token"
    wrong.write_text(new_token())
    running = start_stack(
        loop_thread,
        tmp_path,
        model_settings=ModelServiceSettings(
            config_home=tmp_path / "model-home", auth_file=str(model_principals)
        ),
        model_service_token_file=str(wrong),
    )
    try:
        stub = running.threads
        root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
        with raises_status(grpc.StatusCode.UNAVAILABLE, "does not accept this thread-service"):
            list(stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[user("hi")])))
    finally:
        running.stop()


def test_init_secrets_makes_a_working_deployment_and_keeps_it(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """`python -m spindle.auth init DIR` (compose's secrets-init): the client
    token opens the thread-service, the service token the model-service, the
    files are private, and a second run changes nothing."""
    folder = tmp_path / "secrets"
    main(["init", str(folder)])
    files = {p.name: p.read_text() for p in folder.iterdir()}
    assert set(files) == {
        "client-token",
        "service-token",
        "principals.toml",
        "model-principals.toml",
    }
    assert all((folder / name).stat().st_mode & 0o777 == 0o600 for name in files)
    assert folder.stat().st_mode & 0o777 == 0o700
    client = files["client-token"].strip()
    assert client not in files["principals.toml"]  # only its hash is kept
    main(["init", str(folder)])
    assert {p.name: p.read_text() for p in folder.iterdir()} == files

    model_settings = ModelServiceSettings(
        config_home=tmp_path / "model-home", auth_file=str(folder / "model-principals.toml")
    )
    stack = start_stack(
        loop_thread,
        tmp_path,
        model_settings=model_settings,
        auth_file=str(folder / "principals.toml"),
        model_service_token_file=str(folder / "service-token"),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{stack.thread_port}") as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            with raises_status(grpc.StatusCode.UNAUTHENTICATED):
                stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path)))
            thread = start_as(stub, client, tmp_path)
            request = pb.RunTurnRequest(thread_id=thread.id, input=[user("hi")])
            events = events_of(stub.RunTurn(request, metadata=bearer(client)))
            assert events[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
        with grpc.insecure_channel(f"127.0.0.1:{stack.model_port}") as channel:
            model = mpb_grpc.ModelServiceStub(channel)
            with raises_status(grpc.StatusCode.UNAUTHENTICATED):
                list(model.Generate(mpb.GenerateRequest(), metadata=bearer(client)))
    finally:
        stack.stop()
