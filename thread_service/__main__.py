"""`python -m thread_service`: run the thread-service until SIGTERM or SIGINT."""

from __future__ import annotations

from spindle import serving
from thread_service.app import build
from thread_service.settings import ThreadServiceSettings


def main() -> None:
    serving.main(
        ThreadServiceSettings,
        build,
        label="thread-service",
        description="Spindle thread-service: durable agent threads over gRPC.",
    )


if __name__ == "__main__":
    main()
