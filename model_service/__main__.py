"""`python -m model_service`: run the model-service until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from model_service.app import build
from spindle import serving, settings


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = settings.load(
            settings.ModelServiceSettings,
            argv,
            prog="python -m model_service",
            description="Spindle model-service: the gRPC gateway to model providers.",
        )
    except settings.SettingsError as exc:
        sys.exit(f"model-service: {exc}")

    async def run() -> None:
        await serving.run_until_signal(
            build(config), config.listen, config.shutdown_grace, "model-service"
        )

    serving.main(run, config.log_level)


if __name__ == "__main__":
    main()
