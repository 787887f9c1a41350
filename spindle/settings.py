"""Loading a service's settings: defaults, a TOML table, environment, flags.

Each service declares its settings once, as a frozen dataclass deriving from
`ServiceSettings` whose fields are made with `setting()` (environment
variable, help text); the loader here knows no service's keys. Precedence,
lowest first: built-in defaults, the service's table (`SECTION`) of
`{config_home}/config.toml`, `SPINDLE_*` environment variables, flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DEFAULT_CONFIG_HOME = Path("~/.spindle")
CONFIG_FILE_NAME = "config.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
LOG_STREAMS = ("stderr", "stdout")
TRACING_MODES = ("", "otlp")


class SettingsError(Exception):
    """The configuration cannot be used; the message says which value and why."""


def setting(default: Any, env: str, help: str) -> Any:
    """A field settable from TOML, the environment variable `env` and a flag."""
    meta = {"env": env, "help": help}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServiceSettings:
    """What every service has. A subclass names its TOML table in `SECTION`,
    adds its own fields, and extends `validate` and `from_tables`."""

    SECTION: ClassVar[str] = ""

    config_home: Path = setting(
        DEFAULT_CONFIG_HOME, "SPINDLE_CONFIG_HOME", "folder holding config.toml"
    )
    listen: str = setting("", "SPINDLE_LISTEN", "HOST:PORT to serve on")
    shutdown_grace: float = setting(
        10.0, "SPINDLE_SHUTDOWN_GRACE", "seconds in-flight calls get to finish on SIGTERM"
    )
    log_level: str = setting("INFO", "SPINDLE_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting(
        "text",
        "SPINDLE_LOG_FORMAT",
        "text (for people) or json (one object a line, with the thread, turn and trace ids)",
    )
    log_stream: str = setting("stderr", "SPINDLE_LOG_STREAM", "where logs go: stderr or stdout")
    metrics_listen: str = setting(
        "",
        "SPINDLE_METRICS_LISTEN",
        "HOST:PORT to serve Prometheus metrics on, at /metrics (empty: no metrics); a "
        "non-loopback address needs metrics_public",
    )
    metrics_public: bool = setting(
        False,
        "SPINDLE_METRICS_PUBLIC",
        "serve metrics on a non-loopback metrics_listen: anyone who reaches it reads them "
        "(counts, latencies, method, provider and model names; no ids, contents or secrets)",
    )
    tracing: str = setting(
        "",
        "SPINDLE_TRACING",
        "otlp: export traces over OTLP/HTTP as the OTEL_* variables say (needs the otel "
        "extra); empty: no tracing",
    )
    auth_file: str = setting(
        "",
        "SPINDLE_AUTH_FILE",
        "principals file (TOML): token hashes and client certificate names of the callers "
        "(empty: no authentication, allowed on loopback only)",
    )
    tls_cert: str = setting(
        "", "SPINDLE_TLS_CERT", "PEM certificate chain to serve TLS with (reloaded on change)"
    )
    tls_key: str = setting("", "SPINDLE_TLS_KEY", "PEM private key of tls_cert")
    tls_client_ca: str = setting(
        "",
        "SPINDLE_TLS_CLIENT_CA",
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    insecure_no_auth: bool = setting(
        False,
        "SPINDLE_INSECURE_NO_AUTH",
        "serve a non-loopback address without authentication (anyone who reaches it can use it)",
    )

    @classmethod
    def from_tables(
        cls, section: Mapping[str, Any], environ: Mapping[str, str], origin: str
    ) -> dict[str, Any]:
        """Values of the fields that only TOML sets (nested tables)."""
        return {}

    def validate(self) -> None:
        """Raise SettingsError for a value no service could run with."""
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SettingsError(f"listen must be HOST:PORT, not {self.listen!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_stream not in LOG_STREAMS:
            raise SettingsError(f"log_stream must be one of {', '.join(LOG_STREAMS)}")
        if self.tracing not in TRACING_MODES:
            raise SettingsError("tracing must be otlp, or empty for none")
        if self.metrics_listen:
            self._validate_metrics_listen()
        if not 0 <= self.shutdown_grace <= 3600:
            raise SettingsError("shutdown_grace must be within 0..3600 seconds")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        if self.tls_client_ca and not self.auth_file:
            raise SettingsError("tls_client_ca needs auth_file, which maps certificates to callers")
        if not self.auth_file and not self.insecure_no_auth and not is_loopback(host):
            raise SettingsError(
                f"listening on {self.listen} needs authentication: set auth_file (see the "
                "README, Security), or --insecure-no-auth to serve everyone who reaches it"
            )

    def _validate_metrics_listen(self) -> None:
        host, sep, port = self.metrics_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise SettingsError(
                f"metrics_listen must be HOST:PORT (or empty), not {self.metrics_listen!r}"
            )
        if not self.metrics_public and not is_loopback(host):
            raise SettingsError(
                f"serving metrics on {self.metrics_listen} lets anyone who reaches it read "
                "them: set metrics_public to say so (see the README, Metrics)"
            )


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    host = host.strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


S = TypeVar("S", bound=ServiceSettings)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def convert(cls: type[Any], name: str, value: Any, origin: str) -> Any:
    """`value` as the type of field `name` of `cls`, or a SettingsError naming `origin`."""
    kind = str({f.name: f.type for f in dataclasses.fields(cls)}[name])
    try:
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "bool":
            return _boolean(value)
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
        noun = {
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "bool": "true or false",
        }
        raise SettingsError(
            f"{origin}: {name} must be {noun.get(kind, kind)}, not {value!r}"
        ) from None
    raise SettingsError(f"{origin}: {name} cannot be set here")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _simple_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def argument_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in _simple_fields(cls):
        help = f"{f.metadata['help']} (env {f.metadata['env']}; default {f.default!s})"
        if str(f.type) == "bool":  # a switch: present means true
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action="store_const",
                const=True,
                help=help,
            )
            continue
        parser.add_argument(
            flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(), help=help
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
    env_names = {f.name: f.metadata["env"] for f in _simple_fields(cls)}

    def pick(name: str) -> tuple[Any, str] | None:
        if flags.get(name) is not None:
            return flags[name], flag_name(name)
        if env_names[name] in environ:
            return environ[env_names[name]], env_names[name]
        return None

    home_choice = pick("config_home")
    config_home = Path(str(home_choice[0])) if home_choice else DEFAULT_CONFIG_HOME
    config_home = config_home.expanduser()
    section = read_config_file(config_home).get(cls.SECTION, {})
    if not isinstance(section, dict):
        raise SettingsError(f"config.toml: [{cls.SECTION}] must be a table")
    origin_file = f"{config_home / CONFIG_FILE_NAME} [{cls.SECTION}]"

    values: dict[str, Any] = {}
    for f in _simple_fields(cls):
        chosen = pick(f.name)
        if chosen is not None:
            values[f.name] = convert(cls, f.name, chosen[0], chosen[1])
        elif f.name in section:
            values[f.name] = convert(cls, f.name, section[f.name], origin_file)
        elif isinstance(f.default, Path):
            values[f.name] = f.default.expanduser()
    values["config_home"] = config_home
    unknown = sorted(set(section) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise SettingsError(f"{origin_file}: unknown setting(s): {', '.join(unknown)}")
    values.update(cls.from_tables(section, environ, origin_file))
    settings = cls(**values)
    settings.validate()
    return settings
