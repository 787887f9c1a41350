"""A floor to measure Spindle against: a bare `grpc.aio` server that only answers.

It runs in a process of its own:

    python -m bench.floor --replies FILE [--method /pkg.Service/Method]
    python -m bench.floor --relay HOST:PORT [--method /pkg.Service/Method]

Every floor answers `/spindle.bench.Floor/Echo`, a unary call that returns its
request's bytes. Its streaming method (`--method`, by default
`/spindle.bench.Floor/Stream`) answers any request with the messages recorded
in `--replies` (a JSON list of base64 strings: what a real call streamed, byte
for byte), or, with `--relay`, calls the same method on another floor and
streams back each message as it arrives, unparsed. Two floors, one relaying to
the other, make the two hops a turn takes (client, thread-service,
model-service) with no work behind them: the least any Python gRPC relay of
that shape can cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from spindle.serving import CHANNEL_OPTIONS, SERVER_OPTIONS

ECHO_METHOD = "/spindle.bench.Floor/Echo"
STREAM_METHOD = "/spindle.bench.Floor/Stream"


def raw(data: bytes) -> bytes:
    """(De)serializer of a floor: messages stay bytes, never parsed."""
    return data


def write_replies(path: Path, messages: Sequence[bytes]) -> None:
    """Record the messages a floor will stream (see `--replies`)."""
    path.write_text(json.dumps([base64.b64encode(m).decode() for m in messages]))


def read_replies(path: Path) -> list[bytes]:
    return [base64.b64decode(m) for m in json.loads(path.read_text())]


def handler(method: str, behaviour: grpc.RpcMethodHandler) -> grpc.GenericRpcHandler:
    service, _, name = method.strip("/").rpartition("/")
    return grpc.method_handlers_generic_handler(service, {name: behaviour})


async def echo(request: bytes, context: Any) -> bytes:
    return request


def replay(messages: Sequence[bytes]) -> grpc.RpcMethodHandler:
    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    return grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=raw, response_serializer=raw
    )


def relay(ch: grpc.aio.Channel, method: str) -> grpc.RpcMethodHandler:
    upstream = ch.unary_stream(method, request_serializer=raw, response_deserializer=raw)

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        async for message in upstream(request):
            yield message

    return grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=raw, response_serializer=raw
    )


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM; the port goes to stderr as the services log theirs."""
    relay_channel = None
    if args.relay:
        relay_channel = grpc.aio.insecure_channel(args.relay, options=CHANNEL_OPTIONS)
        streaming = relay(relay_channel, args.method)
    else:
        streaming = replay(read_replies(args.replies))
    server = grpc.aio.server(options=SERVER_OPTIONS)
    unary = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=raw, response_serializer=raw
    )
    server.add_generic_rpc_handlers((handler(ECHO_METHOD, unary), handler(args.method, streaming)))
    port = server.add_insecure_port(args.listen)
    await server.start()
    print(f"floor listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)
    if relay_channel is not None:
        await relay_channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--method", default=STREAM_METHOD, help="the streaming method's path")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--replies", type=Path, help="JSON list of base64 messages to stream")
    source.add_argument("--relay", metavar="HOST:PORT", help="the floor to relay the stream from")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
