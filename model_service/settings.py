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
    base_url: str = ""
    # Replicas of one server (vLLM, SGLang), each with its own prefix cache; a
    # request goes to the one its prompt_cache_key picks (providers/endpoints.py).
    # A provider sets base_url or base_urls, not both.
    base_urls: tuple[str, ...] = ()
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
    # Seconds an endpoint that cannot be reached (or keeps failing) is passed
    # over by other keys while the provider has another; 0 never passes one over.
    endpoint_cooldown: float = 10.0

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The upstream base URLs, one for a provider with `base_url`."""
        return self.base_urls or (self.base_url,)

    def __post_init__(self) -> None:
        where = f"provider {self.name!r}"
        # TOML and the environment give lists; a tuple keeps the settings immutable.
        object.__setattr__(self, "base_urls", tuple(self.base_urls))
        if self.base_url and self.base_urls:
            raise SettingsError(f"{where}: set base_url or base_urls, not both")
        if not self.base_url and not self.base_urls:
            raise SettingsError(f"{where}: base_url is required (or base_urls, a list)")
        for url in self.endpoints:
            scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
            if scheme not in ("http", "https") or not sep or not rest.strip("/"):
                if self.base_urls:
                    problem = f"base_urls must hold http:// or https:// URLs, not {url!r}"
                else:
                    problem = "base_url must be an http:// or https:// URL"
                raise SettingsError(f"{where}: {problem}")
        if len({url.rstrip("/") for url in self.endpoints}) != len(self.endpoints):
            raise SettingsError(f"{where}: base_urls lists an endpoint twice")
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
        if not 0 <= self.endpoint_cooldown < math.inf:
            raise SettingsError(f"{where}: endpoint_cooldown must be 0 (off) or positive")
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
    window_cache_bytes: int = setting(
        256 << 20,
        "SPINDLE_WINDOW_CACHE_BYTES",
        "histories of recent windows kept, in item bytes, so a turn sends only its new "
        "items; 0 keeps none (every turn sends its whole history)",
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
        if self.window_cache_bytes < 0:
            raise SettingsError("window_cache_bytes must be 0 or more")
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
        overrides = _provider_environment(name, environ, where)
        if {"base_url", "base_urls"} & set(overrides):
            # An endpoint override replaces the file's endpoints, in either form.
            table = {k: v for k, v in table.items() if k not in ("base_url", "base_urls")}
        table = {**table, **overrides}
        if "base_url" not in table and "base_urls" not in table:
            raise SettingsError(f"{where}: base_url is required (or base_urls, a list)")
        urls = table.get("base_urls", [])
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise SettingsError(f"{where}: base_urls must be a list of URLs")
        if "base_urls" in table and not urls:
            raise SettingsError(f"{where}: base_urls must list at least one URL")
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


def _provider_environment(name: str, environ: Mapping[str, str], where: str) -> dict[str, Any]:
    """`SPINDLE_PROVIDER_<NAME>_<SETTING>` variables override the provider's
    scalar settings (e.g. SPINDLE_PROVIDER_OPENAI_BASE_URL), for containers;
    `..._BASE_URLS` is a comma-separated list of endpoints."""
    prefix = f"SPINDLE_PROVIDER_{name.upper().replace('-', '_')}_"
    values: dict[str, Any] = {
        key: environ[prefix + key.upper()]
        for key in _PROVIDER_SCALARS
        if prefix + key.upper() in environ
    }
    if prefix + "BASE_URLS" in environ:
        if "base_url" in values:
            raise SettingsError(f"{where}: set {prefix}BASE_URL or {prefix}BASE_URLS, not both")
        text = environ[prefix + "BASE_URLS"]
        values["base_urls"] = [url.strip() for url in text.split(",") if url.strip()]
    return values


def _models(table: Any, origin: str) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SettingsError(f"{origin}: models must map model names to provider names")
    return dict(table)
