"""The model-service's settings: `[model_service]` in config.toml, with its
`providers` and `models` tables, `SPINDLE_*` variables and flags (see
`spindle.settings` for the precedence)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from model_service.providers.wire_common import RESERVED_BODY_FIELDS, WIRE_APIS
from spindle.settings import ServiceSettings, SettingsError, convert, setting

EMBEDDED_PROVIDER = "embedded"


@dataclass(frozen=True)
class ProviderSettings:
    """One upstream provider, from `[model_service.providers.NAME]`. Checked
    when made, so a provider never sees settings it cannot use."""

    name: str
    base_url: str
    wire_api: str = "responses"  # a key of WIRE_APIS
    api_key_env: str = ""  # name of the environment variable holding the key
    # "authorization" sends `Bearer <key>`; any other name (Azure: "api-key")
    # sends the bare key in that header.
    api_key_header: str = "authorization"
    headers: Mapping[str, str] = field(default_factory=dict)
    query_params: Mapping[str, str] = field(default_factory=dict)
    # Added to every request body, e.g. {store = false} or reasoning options;
    # it cannot replace what Spindle sets itself (RESERVED_BODY_FIELDS).
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    write_timeout: float = 60.0
    pool_timeout: float = 10.0
    idle_timeout: float = 300.0  # longest silence inside a stream; 0 turns it off
    max_connections: int = 512
    max_retries: int = 4
    backoff_initial: float = 0.25
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        where = f"provider {self.name!r}"
        scheme, sep, rest = self.base_url.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.strip("/"):
            raise SettingsError(f"{where}: base_url must be an http:// or https:// URL")
        if self.wire_api not in WIRE_APIS:
            raise SettingsError(f"{where}: wire_api must be one of {', '.join(WIRE_APIS)}")
        for mapping in ("headers", "query_params"):
            if not all(isinstance(v, str) for v in getattr(self, mapping).values()):
                raise SettingsError(f"{where}: {mapping} values must be strings")
        reserved = sorted(RESERVED_BODY_FIELDS & set(self.extra_body))
        if reserved:
            raise SettingsError(f"{where}: extra_body cannot set {', '.join(reserved)}")
        try:
            json.dumps(dict(self.extra_body))
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: extra_body must hold JSON values only") from None
        for name in ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise SettingsError(f"{where}: {name} must be a positive number of seconds")
        if not 0 <= self.idle_timeout < math.inf:
            raise SettingsError(f"{where}: idle_timeout must be 0 (off) or positive")
        if self.max_connections < 1 or self.max_retries < 0:
            raise SettingsError(f"{where}: max_connections must be >= 1 and max_retries >= 0")
        if not 0 <= self.backoff_initial <= self.backoff_max < math.inf:
            raise SettingsError(f"{where}: need 0 <= backoff_initial <= backoff_max")


_PROVIDER_SCALARS = sorted(
    f.name
    for f in dataclasses.fields(ProviderSettings)
    if f.type in ("str", "int", "float") and f.name != "name"
)
_PROVIDER_TABLES = ("headers", "query_params", "extra_body")


@dataclass(frozen=True)
class ModelServiceSettings(ServiceSettings):
    SECTION: ClassVar[str] = "model_service"

    listen: str = setting("127.0.0.1:50052", "SPINDLE_MODEL_LISTEN", "HOST:PORT to serve on")
    # Unset (""), a model not named in [model_service.models] is served only if
    # the embedded provider serves its name (EmbeddedProvider.serves), else it is
    # NOT_FOUND; set, even to "embedded", every such model goes to that provider.
    default_provider: str = setting(
        "",
        "SPINDLE_DEFAULT_PROVIDER",
        "provider of models not named in [model_service.models]; unset, only spindle-* "
        "names (the embedded provider's) are served and others are NOT_FOUND",
    )
    cache_max_entries: int = setting(
        100_000, "SPINDLE_CACHE_MAX_ENTRIES", "embedded prompt cache: most prefixes kept"
    )
    cache_ttl: float = setting(
        600.0, "SPINDLE_CACHE_TTL", "embedded prompt cache: seconds an unused prefix lives"
    )
    # Only from TOML: `[model_service.providers.NAME]` tables and the
    # `[model_service.models]` map of model name to provider name.
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_tables(
        cls, section: Mapping[str, Any], environ: Mapping[str, str], origin: str
    ) -> dict[str, Any]:
        return {
            "providers": _providers(section.get("providers", {}), environ, origin),
            "models": _models(section.get("models", {}), origin),
        }

    def validate(self) -> None:
        super().validate()
        if self.cache_max_entries < 1:
            raise SettingsError("cache_max_entries must be at least 1")
        if not 0 < self.cache_ttl <= 86400 * 365:
            raise SettingsError("cache_ttl must be a positive number of seconds")
        for model, provider in self.models.items():
            if provider != EMBEDDED_PROVIDER and provider not in self.providers:
                raise SettingsError(f"model {model!r} names unknown provider {provider!r}")
        default = self.default_provider
        if default and default != EMBEDDED_PROVIDER and default not in self.providers:
            raise SettingsError(f"default_provider names unknown provider {default!r}")


def _providers(tables: Any, environ: Mapping[str, str], origin: str) -> dict[str, ProviderSettings]:
    if not isinstance(tables, dict):
        raise SettingsError(f"{origin}: providers must be a table of tables")
    known = {f.name for f in dataclasses.fields(ProviderSettings)} - {"name"}
    result: dict[str, ProviderSettings] = {}
    for name, table in tables.items():
        where = f"{origin} providers.{name}"
        if name == EMBEDDED_PROVIDER:
            raise SettingsError(f"{where}: the name {EMBEDDED_PROVIDER!r} is reserved")
        if not isinstance(table, dict):
            raise SettingsError(f"{where}: must be a table")
        unknown = sorted(set(table) - known)
        if unknown:
            raise SettingsError(f"{where}: unknown setting(s): {', '.join(unknown)}")
        table = {**table, **_provider_environment(name, environ)}
        if "base_url" not in table:
            raise SettingsError(f"{where}: base_url is required")
        for mapping in _PROVIDER_TABLES:
            if not isinstance(table.get(mapping, {}), dict):
                raise SettingsError(f"{where}: {mapping} must be a table")
        values = {
            key: convert(ProviderSettings, key, value, where) if key in _PROVIDER_SCALARS else value
            for key, value in table.items()
        }
        try:
            result[name] = ProviderSettings(name=name, **values)
        except SettingsError as exc:
            raise SettingsError(f"{origin} {exc}") from None
    return result


def _provider_environment(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`SPINDLE_PROVIDER_<NAME>_<SETTING>` variables override the provider's
    scalar settings (e.g. SPINDLE_PROVIDER_OPENAI_BASE_URL), for containers."""
    prefix = f"SPINDLE_PROVIDER_{name.upper().replace('-', '_')}_"
    return {
        key: environ[prefix + key.upper()]
        for key in _PROVIDER_SCALARS
        if prefix + key.upper() in environ
    }


def _models(table: Any, origin: str) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SettingsError(f"{origin}: models must map model names to provider names")
    return dict(table)
