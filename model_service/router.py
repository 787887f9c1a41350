"""Which provider serves a model: `[model_service.models]`, else the default."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from model_service.prompt_cache import PromptCache
from model_service.providers.embedded import EmbeddedProvider
from model_service.providers.http import HttpProvider
from spindle.model import ModelEvent, ModelRequest
from spindle.settings import EMBEDDED_PROVIDER, ModelServiceSettings

log = logging.getLogger(__name__)


class Provider(Protocol):
    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]: ...

    async def aclose(self) -> None: ...


class Router:
    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, str], default: str):
        self.providers = dict(providers)
        self.models = dict(models)
        self.default = default

    @classmethod
    def from_settings(
        cls, settings: ModelServiceSettings, environ: Mapping[str, str] | None = None
    ) -> Router:
        environ = os.environ if environ is None else environ
        providers: dict[str, Provider] = {
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
