"""Which provider serves a model: `[model_service.models]`, else the default."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Mapping

from model_service.prompt_cache import PromptCache
from model_service.providers.embedded import EmbeddedProvider
from model_service.providers.http import HttpProvider
from model_service.settings import EMBEDDED_PROVIDER, ModelServiceSettings
from spindle.model import ModelEvent, ModelRequest, ModelStreamer

log = logging.getLogger(__name__)


class Router:
    """Providers by name, and the model-to-provider map that picks one."""

    def __init__(
        self, providers: Mapping[str, ModelStreamer], models: Mapping[str, str], default: str
    ) -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        self.default = default

    @classmethod
    def from_settings(
        cls, settings: ModelServiceSettings, environ: Mapping[str, str] | None = None
    ) -> Router:
        environ = os.environ if environ is None else environ
        providers: dict[str, ModelStreamer] = {
            EMBEDDED_PROVIDER: EmbeddedProvider(
                PromptCache(settings.cache_max_entries, settings.cache_ttl)
            )
        }
        for name, provider_settings in settings.providers.items():
            providers[name] = HttpProvider(provider_settings, environ)
        return cls(providers, settings.models, settings.default_provider)

    def provider_name(self, model: str) -> str:
        return self.models.get(model, self.default)

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        return self.providers[self.provider_name(request.model)].stream(request)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
