"""`python -m model_service`: run the model-service until SIGTERM or SIGINT."""

from __future__ import annotations

from model_service.app import build
from model_service.settings import ModelServiceSettings
from spindle import serving


def main() -> None:
    serving.main(
        ModelServiceSettings,
        build,
        label="model-service",
        description="Spindle model-service: the gRPC gateway to model providers.",
    )


if __name__ == "__main__":
    main()
