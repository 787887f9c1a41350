"""What the router asks of every provider, and what a provider reports back.

`spindle.model.ModelStreamer` is the shared contract (a request in, events
out). A provider here also fills a `Served` record as it goes, so that the
servicer can say which upstream endpoint served a call, in its log line and
in the `Completed` message, without the domain events carrying it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from spindle.model import ModelEvent, ModelRequest


@dataclass
class Served:
    """How one call was served, as far as it got."""

    # The base URL (without credentials) of the endpoint that served the call,
    # or of the last one tried when it failed; "" for the embedded provider.
    endpoint: str = ""


class Provider(Protocol):
    def stream(
        self, request: ModelRequest, served: Served | None = None
    ) -> AsyncGenerator[list[ModelEvent], None]: ...

    async def aclose(self) -> None: ...
