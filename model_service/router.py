"""Which provider serves a model: `[model_service.models]`, else `default_provider`,
else the embedded provider for its own names; any other name is NOT_FOUND."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from model_service.prompt_cache import PromptCache
from model_service.providers.base import Provider
from model_service.providers.embedded import MODEL_PREFIX, EmbeddedProvider
from model_service.providers.http import HttpProvider
from model_service.settings import EMBEDDED_PROVIDER, ModelServiceSettings
from spindle.errors import NotFound, quoted

log = logging.getLogger(__name__)

# How much of the configured models a NOT_FOUND message lists.
_LISTED_MODELS = 10
_LISTED_MODEL_CHARS = 60


class Router:
    """Providers by name, and the model-to-provider map that picks one."""

    def __init__(
        self, providers: Mapping[str, Provider], models: Mapping[str, str], default: str = ""
    ) -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        self.default = default  # "" when default_provider is not set

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
        """The provider of `model`; NotFound when none serves it."""
        if model in self.models:
            return self.models[model]
        if self.default:
            return self.default
        if EmbeddedProvider.serves(model):
            return EMBEDDED_PROVIDER
        raise NotFound(self._not_served(model))

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()

    def _not_served(self, model: str) -> str:
        """Names what is served, briefly: a caller learns its mistake from it, and a
        long or strange model name cannot bloat or forge the message."""
        names = sorted(self.models)
        listed = ", ".join(quoted(name, _LISTED_MODEL_CHARS) for name in names[:_LISTED_MODELS])
        if len(names) > _LISTED_MODELS:
            listed += f" and {len(names) - _LISTED_MODELS} more"
        configured = f"the configured models are {listed}" if names else "no models are configured"
        return (
            f"model {quoted(model, 100)} is not served here: {configured}, and the embedded "
            f"provider serves names starting {quoted(MODEL_PREFIX)}"
        )
