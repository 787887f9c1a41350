"""Service configuration: one typed place, read from TOML, environment and flags.

Precedence, lowest first: built-in defaults, the `[thread_service]` or
`[model_service]` table of `{config_home}/config.toml`, `SPINDLE_*`
environment variables, command-line flags. Every setting is declared once
below, with its environment variable, flag and help text; the README's table
is the same list.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_CONFIG_HOME = Path("~/.spindle")
CONFIG_FILE_NAME = "config.toml"
EMBEDDED_PROVIDER = "embedded"


class SettingsError(Exception):
    """The configuration cannot be used; the message says which value and why."""


def _setting(default: Any, env: str, help: str, **kwargs: Any) -> Any:
    meta = {"env": env, "help": help}
    if callable(default):
        return field(default_factory=default, metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


@dataclass(frozen=True)
class ThreadServiceSettings:
    config_home: Path = _setting(
        DEFAULT_CONFIG_HOME,
        "SPINDLE_CONFIG_HOME",
        "folder holding config.toml (settings and trusted projects)",
    )
    listen: str = _setting("127.0.0.1:50051", "SPINDLE_THREAD_LISTEN", "HOST:PORT to serve on")
    model_service: str = _setting(
        "127.0.0.1:50052", "SPINDLE_MODEL_SERVICE", "HOST:PORT of the model-service"
    )
    data_dir: Path = _setting(
        Path("~/.spindle/data"), "SPINDLE_DATA_DIR", "folder of the SQLite database"
    )
    default_model: str = _setting(
        "spindle-echo", "SPINDLE_DEFAULT_MODEL", "model of threads that name none"
    )
    max_spawn_depth: int = _setting(
        4, "SPINDLE_MAX_SPAWN_DEPTH", "deepest sub-agent level allowed (root is 0)"
    )
    sqlite_synchronous: str = _setting(
        "FULL", "SPINDLE_SQLITE_SYNCHRONOUS", "SQLite synchronous mode: FULL or NORMAL"
    )
    shutdown_grace: float = _setting(
        10.0, "SPINDLE_SHUTDOWN_GRACE", "seconds in-flight calls get to finish on SIGTERM"
    )
    log_level: str = _setting("INFO", "SPINDLE_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")


@dataclass(frozen=True)
class ProviderSettings:
    """One upstream provider, from `[model_service.providers.NAME]`."""

    name: str
    base_url: str
    wire_api: str = "responses"  # "responses" or "chat"
    api_key_env: str = ""  # name of the environment variable holding the key
    # "authorization" sends `Bearer <key>`; any other name (Azure: "api-key")
    # sends the bare key in that header.
    api_key_header: str = "authorization"
    headers: Mapping[str, str] = field(default_factory=dict)
    query_params: Mapping[str, str] = field(default_factory=dict)
    # Added to every request body, e.g. {store = false} or reasoning options;
    # it cannot replace what Spindle sets itself (see RESERVED_BODY_FIELDS).
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


RESERVED_BODY_FIELDS = frozenset(
    {
        "model",
        "input",
        "messages",
        "instructions",
        "tools",
        "stream",
        "stream_options",
        "prompt_cache_key",
    }
)


@dataclass(frozen=True)
class ModelServiceSettings:
    config_home: Path = _setting(
        DEFAULT_CONFIG_HOME, "SPINDLE_CONFIG_HOME", "folder holding config.toml"
    )
    listen: str = _setting("127.0.0.1:50052", "SPINDLE_MODEL_LISTEN", "HOST:PORT to serve on")
    default_provider: str = _setting(
        EMBEDDED_PROVIDER,
        "SPINDLE_DEFAULT_PROVIDER",
        "provider of models not named in [model_service.models]",
    )
    cache_max_entries: int = _setting(
        100_000, "SPINDLE_CACHE_MAX_ENTRIES", "embedded prompt cache: most prefixes kept"
    )
    cache_ttl: float = _setting(
        600.0, "SPINDLE_CACHE_TTL", "embedded prompt cache: seconds an unused prefix lives"
    )
    shutdown_grace: float = _setting(
        10.0, "SPINDLE_SHUTDOWN_GRACE", "seconds in-flight calls get to finish on SIGTERM"
    )
    log_level: str = _setting("INFO", "SPINDLE_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    # Only from TOML: `[model_service.providers.NAME]` tables and the
    # `[model_service.models]` map of model name to provider name.
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)


S = TypeVar("S", ThreadServiceSettings, ModelServiceSettings)

_SECTIONS = {ThreadServiceSettings: "thread_service", ModelServiceSettings: "model_service"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(cls: type[Any], name: str, value: Any, origin: str) -> Any:
    """`value` as the type of field `name` of `cls`, or a SettingsError naming `origin`."""
    kind = str({f.name: f.type for f in dataclasses.fields(cls)}[name])
    try:
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if math.isnan(number):
                raise ValueError
            return number
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except ValueError:
        noun = {"int": "an integer", "float": "a number", "str": "a string"}.get(kind, kind)
        raise SettingsError(f"{origin}: {name} must be {noun}, not {value!r}") from None
    raise SettingsError(f"{origin}: {name} cannot be set here")


def _simple_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def argument_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in _simple_fields(cls):
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {f.metadata['env']}; default {f.default})",
        )
    return parser


def read_config_file(config_home: Path) -> dict[str, Any]:
    """The parsed `config.toml`, or {} when there is none."""
    path = config_home / CONFIG_FILE_NAME
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from None


def load(
    cls: type[S],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "spindle",
    description: str = "",
) -> S:
    """Build settings from defaults, config.toml, environment and flags."""
    environ = os.environ if environ is None else environ
    flags = vars(argument_parser(cls, prog, description).parse_args(argv))
    values: dict[str, Any] = {}

    def pick(name: str, env: str) -> tuple[Any, str] | None:
        if flags.get(name) is not None:
            return flags[name], _flag(name)
        if env in environ:
            return environ[env], env
        return None

    home_choice = pick("config_home", "SPINDLE_CONFIG_HOME")
    config_home = Path(str(home_choice[0])) if home_choice else DEFAULT_CONFIG_HOME
    config_home = config_home.expanduser()
    section = read_config_file(config_home).get(_SECTIONS[cls], {})
    if not isinstance(section, dict):
        raise SettingsError(f"config.toml: [{_SECTIONS[cls]}] must be a table")
    origin_file = f"{config_home / CONFIG_FILE_NAME} [{_SECTIONS[cls]}]"

    for f in _simple_fields(cls):
        chosen = pick(f.name, f.metadata["env"])
        if chosen is not None:
            values[f.name] = _convert(cls, f.name, chosen[0], chosen[1])
        elif f.name in section:
            values[f.name] = _convert(cls, f.name, section[f.name], origin_file)
        elif isinstance(f.default, Path):
            values[f.name] = f.default.expanduser()
    values["config_home"] = config_home
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise SettingsError(f"{origin_file}: unknown setting(s): {', '.join(unknown)}")
    if cls is ModelServiceSettings:
        values["providers"] = _providers(section.get("providers", {}), environ, origin_file)
        values["models"] = _models(section.get("models", {}), origin_file)
    settings = cls(**values)
    _validate(settings)
    return settings


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
        if table.get("wire_api", "responses") not in ("responses", "chat"):
            raise SettingsError(f"{where}: wire_api must be 'responses' or 'chat'")
        for mapping in ("headers", "query_params", "extra_body"):
            if not isinstance(table.get(mapping, {}), dict):
                raise SettingsError(f"{where}: {mapping} must be a table")
        for mapping in ("headers", "query_params"):
            if not all(isinstance(v, str) for v in table.get(mapping, {}).values()):
                raise SettingsError(f"{where}: {mapping} values must be strings")
        reserved = sorted(RESERVED_BODY_FIELDS & set(table.get("extra_body", {})))
        if reserved:
            raise SettingsError(f"{where}: extra_body cannot set {', '.join(reserved)}")
        values = {
            key: _convert(ProviderSettings, key, value, where)
            if key in _PROVIDER_SCALARS
            else value
            for key, value in table.items()
        }
        provider = ProviderSettings(name=name, **values)
        _check_provider(provider, where)
        result[name] = provider
    return result


def _check_provider(provider: ProviderSettings, where: str) -> None:
    scheme, sep, rest = provider.base_url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest:
        raise SettingsError(f"{where}: base_url must be an http:// or https:// URL")
    try:
        json.dumps(dict(provider.extra_body))
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: extra_body must hold JSON values only") from None
    timeouts = ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout")
    for name in timeouts:
        if not 0 < getattr(provider, name) < math.inf:
            raise SettingsError(f"{where}: {name} must be a positive number of seconds")
    if not 0 <= provider.idle_timeout < math.inf:
        raise SettingsError(f"{where}: idle_timeout must be 0 (off) or positive")
    if provider.max_connections < 1 or provider.max_retries < 0:
        raise SettingsError(f"{where}: max_connections must be >= 1 and max_retries >= 0")
    if not 0 <= provider.backoff_initial <= provider.backoff_max < math.inf:
        raise SettingsError(f"{where}: need 0 <= backoff_initial <= backoff_max")


_PROVIDER_SCALARS = {
    f.name
    for f in dataclasses.fields(ProviderSettings)
    if f.type in ("str", "int", "float") and f.name != "name"
}


def _provider_environment(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`SPINDLE_PROVIDER_<NAME>_<SETTING>` variables override the provider's
    scalar settings (e.g. SPINDLE_PROVIDER_OPENAI_BASE_URL), for containers."""
    prefix = f"SPINDLE_PROVIDER_{name.upper().replace('-', '_')}_"
    return {
        key: environ[prefix + key.upper()]
        for key in sorted(_PROVIDER_SCALARS)
        if prefix + key.upper() in environ
    }


def _models(table: Any, origin: str) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise SettingsError(f"{origin}: models must map model names to provider names")
    return dict(table)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _validate(settings: ThreadServiceSettings | ModelServiceSettings) -> None:
    host, sep, port = settings.listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SettingsError(f"listen must be HOST:PORT, not {settings.listen!r}")
    if settings.log_level.upper() not in _LOG_LEVELS:
        raise SettingsError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
    if not 0 <= settings.shutdown_grace <= 3600:
        raise SettingsError("shutdown_grace must be within 0..3600 seconds")
    if isinstance(settings, ThreadServiceSettings):
        if settings.max_spawn_depth < 0:
            raise SettingsError("max_spawn_depth must be 0 or more")
        if settings.sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise SettingsError("sqlite_synchronous must be FULL, NORMAL or EXTRA")
    else:
        if settings.cache_max_entries < 1:
            raise SettingsError("cache_max_entries must be at least 1")
        if not 0 < settings.cache_ttl <= 86400 * 365:
            raise SettingsError("cache_ttl must be a positive number of seconds")
        for model, provider in settings.models.items():
            if provider != EMBEDDED_PROVIDER and provider not in settings.providers:
                raise SettingsError(f"model {model!r} names unknown provider {provider!r}")
        default = settings.default_provider
        if default != EMBEDDED_PROVIDER and default not in settings.providers:
            raise SettingsError(f"default_provider names unknown provider {default!r}")
