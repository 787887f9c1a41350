"""`python -m thread_service`: run the thread-service until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from spindle import serving, settings
from thread_service.app import build


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = settings.load(
            settings.ThreadServiceSettings,
            argv,
            prog="python -m thread_service",
            description="Spindle thread-service: durable agent threads over gRPC.",
        )
    except settings.SettingsError as exc:
        sys.exit(f"thread-service: {exc}")

    async def run() -> None:
        await serving.run_until_signal(
            await build(config), config.listen, config.shutdown_grace, "thread-service"
        )

    serving.main(run, config.log_level)


if __name__ == "__main__":
    main()
