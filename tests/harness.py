"""Running real Spindle servers for tests: in-process on a background event
loop, or as real processes, always on loopback with ephemeral ports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from model_service.app import build as build_model_service
from model_service.settings import ModelServiceSettings
from spindle import serving
from spindle.settings import ServiceSettings
from spindle.v1 import model_service_pb2_grpc, thread_service_pb2_grpc
from thread_service.app import build as build_thread_service
from thread_service.settings import ThreadServiceSettings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


class LoopThread:
    """An asyncio loop in a daemon thread, for servers under synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        """Stop the loop as `asyncio.run` ends one: what still runs on it (a
        server a failed test never stopped) is cancelled first."""
        self.run(_cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _cancel_the_rest() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@dataclass
class Stack:
    """A model-service and a thread-service, started in-process."""

    loop: LoopThread
    thread_settings: ThreadServiceSettings
    model_port: int = 0
    thread_port: int = 0
    servers: list[serving.RunningServer] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def threads(self) -> thread_service_pb2_grpc.ThreadServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.thread_port}")
        self.channels.append(channel)
        return thread_service_pb2_grpc.ThreadServiceStub(channel)

    @property
    def models(self) -> model_service_pb2_grpc.ModelServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.model_port}")
        self.channels.append(channel)
        return model_service_pb2_grpc.ModelServiceStub(channel)

    def stop(self, grace: float = 1.0) -> None:
        """Stop the servers (as SIGTERM would), then close the test's channels."""
        for server in reversed(self.servers):
            self.loop.run(server.stop(grace))
        self.servers.clear()
        for channel in self.channels:
            channel.close()


def start_stack(
    loop: LoopThread,
    tmp: Path,
    *,
    model_settings: ModelServiceSettings | None = None,
    max_spawn_depth: int = 4,
    config_home: Path | None = None,
    **thread_settings: Any,
) -> Stack:
    """A model-service and a thread-service in this process; `thread_settings`
    override the thread-service's settings."""
    model_settings = model_settings or ModelServiceSettings(config_home=tmp / "model-home")
    model_server = loop.run(_start(build_model_service(model_settings), model_settings))
    settings = ThreadServiceSettings(
        config_home=config_home or tmp / "home",
        data_dir=tmp / "data",
        model_service=f"127.0.0.1:{model_server.port}",
        max_spawn_depth=max_spawn_depth,
        sqlite_synchronous="NORMAL",
    )
    settings = dataclasses.replace(settings, **thread_settings)
    stack = Stack(loop, settings, model_port=model_server.port, servers=[model_server])
    thread_server = loop.run(_start(build_thread_service(settings), settings))
    stack.servers.append(thread_server)
    stack.thread_port = thread_server.port
    return stack


async def _start(
    service: Awaitable[serving.Service], settings: ServiceSettings
) -> serving.RunningServer:
    return await serving.start(await service, "127.0.0.1:0", serving.credentials_of(settings))


_LISTENING = re.compile(r"listening on [^\s:]+:(\d+)")
_METRICS = re.compile(r"metrics on (http://\S+/metrics)")


class ServiceProcess:
    """A service started with `python -m`, its log collected from stderr."""

    def __init__(self, module: str, args: list[str], env: dict[str, str] | None = None):
        self.module = module
        self.log_lines: list[str] = []
        self._port: Future[int] = Future()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--listen", "127.0.0.1:0", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and not self._port.done():
                self._port.set_result(int(match.group(1)))
        if not self._port.done():
            self._port.set_exception(
                RuntimeError(f"{self.module} exited:\n" + "\n".join(self.log_lines))
            )

    @property
    def port(self) -> int:
        return self._port.result(timeout=30)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics_url(self, timeout: float = 30) -> str:
        """Where the service serves its metrics (started with --metrics-listen),
        as its log says right after it listens."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines:
                match = _METRICS.search(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.module} serves no metrics:\n{self.log_text()}")
            time.sleep(0.02)

    def tracebacks(self) -> list[str]:
        """Each traceback in the log, from the line before it through the
        exception's own line."""
        lines = list(self.log_lines)
        found = []
        for at, line in enumerate(lines):
            if "Traceback" not in line:
                continue
            end = at + 1
            while end < len(lines) and end - at < 60 and lines[end].startswith((" ", "\t")):
                end += 1
            end = min(end + 1, len(lines))  # the exception's own line
            found.append("\n".join(lines[max(at - 1, 0) : end]))
        return found

    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def thread_process(
    model: ServiceProcess | str,
    data_dir: Path,
    config_home: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    """A thread-service process that calls `model` (a process, or a gRPC target)."""
    return ServiceProcess(
        "thread_service",
        [
            "--model-service",
            model if isinstance(model, str) else model.address,
            "--data-dir",
            str(data_dir),
            "--config-home",
            str(config_home),
            *args,
        ],
        env,
    )


@contextmanager
def service_pair(
    tmp: Path,
    extra_thread_args: Sequence[str] = (),
    *,
    extra_model_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A model-service (config home `tmp/model-home`) and a thread-service
    calling it (data in `tmp/data`, config home `tmp/home`), both started;
    both stopped at the end."""
    model = ServiceProcess(
        "model_service", ["--config-home", str(tmp / "model-home"), *extra_model_args], env
    )
    thread = None
    try:
        thread = thread_process(model, tmp / "data", tmp / "home", *extra_thread_args, env=env)
        _ = thread.port
        yield model, thread
    finally:
        if thread is not None:
            thread.stop()
        model.stop()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
