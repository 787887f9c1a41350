"""The thread-service's settings: `[thread_service]` in config.toml, `SPINDLE_*`
variables and flags (see `spindle.settings` for the precedence)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from spindle.settings import DEFAULT_CONFIG_HOME, ServiceSettings, SettingsError, setting
from thread_service.model_client import BALANCING_POLICIES
from thread_service.stores.backend import sqlite_path

SQLITE_SYNCHRONOUS_MODES = ("FULL", "EXTRA", "NORMAL")
# What one request to the model-service may carry, with room for its framing.
MAX_HISTORY_CAP = 48 << 20


@dataclass(frozen=True)
class ThreadServiceSettings(ServiceSettings):
    SECTION: ClassVar[str] = "thread_service"

    config_home: Path = setting(
        DEFAULT_CONFIG_HOME,
        "SPINDLE_CONFIG_HOME",
        "folder holding config.toml (settings and trusted projects)",
    )
    listen: str = setting("127.0.0.1:50051", "SPINDLE_THREAD_LISTEN", "HOST:PORT to serve on")
    model_service: str = setting(
        "127.0.0.1:50052",
        "SPINDLE_MODEL_SERVICE",
        "the model-service: HOST:PORT, dns:///HOST:PORT (every address the name resolves "
        "to) or ipv4:ADDR:PORT,ADDR:PORT",
    )
    model_service_balancing: str = setting(
        "ring_hash",
        "SPINDLE_MODEL_SERVICE_BALANCING",
        "how requests spread over model-service replicas: ring_hash (by prompt_cache_key, "
        "so a key's prompt cache stays warm) or round_robin",
    )
    data_dir: Path = setting(
        Path("~/.spindle/data"), "SPINDLE_DATA_DIR", "folder of the default SQLite database"
    )
    store: str = setting(
        "",
        "SPINDLE_STORE",
        "sqlite:///PATH or postgresql://USER@HOST/DB (empty: SQLite in the data dir)",
    )
    store_pool_min: int = setting(1, "SPINDLE_STORE_POOL_MIN", "PostgreSQL: connections kept open")
    store_pool_max: int = setting(
        10, "SPINDLE_STORE_POOL_MAX", "PostgreSQL: most connections at once"
    )
    store_timeout: float = setting(
        5.0,
        "SPINDLE_STORE_TIMEOUT",
        "PostgreSQL: seconds to wait for a connection before a call fails UNAVAILABLE",
    )
    model_service_token_file: str = setting(
        "",
        "SPINDLE_MODEL_SERVICE_TOKEN_FILE",
        "file holding the bearer token to call the model-service with (read again when it changes)",
    )
    model_service_tls_ca: str = setting(
        "",
        "SPINDLE_MODEL_SERVICE_TLS_CA",
        "PEM CA to verify the model-service's TLS certificate with; set, the channel uses TLS",
    )
    model_service_tls_cert: str = setting(
        "", "SPINDLE_MODEL_SERVICE_TLS_CERT", "PEM client certificate for mutual TLS"
    )
    model_service_tls_key: str = setting(
        "", "SPINDLE_MODEL_SERVICE_TLS_KEY", "PEM key of model_service_tls_cert"
    )
    model_timeout: float = setting(
        600.0,
        "SPINDLE_MODEL_TIMEOUT",
        "seconds a model call may take at most (the deadline passed to the model-service)",
    )
    trust_roots: str = setting(
        "",
        "SPINDLE_TRUST_ROOTS",
        "folders (separated by os.pathsep, ':') under which StartThread may work and trust "
        "projects, for callers the auth_file gives none; empty: anywhere without auth_file, "
        "nowhere with it",
    )
    max_item_bytes: int = setting(
        1 << 20, "SPINDLE_MAX_ITEM_BYTES", "largest item of a turn's input, in bytes"
    )
    max_turn_bytes: int = setting(
        2 << 20, "SPINDLE_MAX_TURN_BYTES", "largest turn input (items and tools), in bytes"
    )
    max_history_bytes: int = setting(
        16 << 20,
        "SPINDLE_MAX_HISTORY_BYTES",
        "largest history of a thread, in bytes: what one model request must carry",
    )
    history_cache_bytes: int = setting(
        256 << 20,
        "SPINDLE_HISTORY_CACHE_BYTES",
        "histories of recent threads kept between turns, in item bytes, so a turn reads "
        "and sends only what is new; 0 keeps none",
    )
    max_instructions_bytes: int = setting(
        64 << 10, "SPINDLE_MAX_INSTRUCTIONS_BYTES", "longest instructions of a thread, in bytes"
    )
    rate_limit_requests: float = setting(
        0.0, "SPINDLE_RATE_LIMIT_REQUESTS", "calls a principal may make a minute (0: no limit)"
    )
    rate_limit_tokens: float = setting(
        0.0,
        "SPINDLE_RATE_LIMIT_TOKENS",
        "model tokens (input and output) a principal may use a minute (0: no limit)",
    )
    request_id_ttl: float = setting(
        86400.0,
        "SPINDLE_REQUEST_ID_TTL",
        "seconds a request id is kept: retries within it act once",
    )
    turn_lease: float = setting(
        6.0,
        "SPINDLE_TURN_LEASE",
        "seconds without a heartbeat after which another replica ends a replica's turns",
    )
    default_model: str = setting(
        "spindle-echo", "SPINDLE_DEFAULT_MODEL", "model of threads that name none"
    )
    max_spawn_depth: int = setting(
        4, "SPINDLE_MAX_SPAWN_DEPTH", "deepest sub-agent level allowed (root is 0)"
    )
    max_trusted_projects: int = setting(
        1000,
        "SPINDLE_MAX_TRUSTED_PROJECTS",
        "most projects StartThread saves as trusted in config.toml; past it, a new "
        "project is trusted in memory only, with a warning",
    )
    sqlite_synchronous: str = setting(
        "FULL", "SPINDLE_SQLITE_SYNCHRONOUS", "SQLite synchronous mode: FULL, EXTRA or NORMAL"
    )

    def validate(self) -> None:
        super().validate()
        if self.max_spawn_depth < 0:
            raise SettingsError("max_spawn_depth must be 0 or more")
        if self.max_trusted_projects < 1:
            raise SettingsError("max_trusted_projects must be 1 or more")
        if self.history_cache_bytes < 0:
            raise SettingsError("history_cache_bytes must be 0 or more")
        if self.sqlite_synchronous.upper() not in SQLITE_SYNCHRONOUS_MODES:
            raise SettingsError("sqlite_synchronous must be FULL, EXTRA or NORMAL")
        if self.model_service_balancing not in BALANCING_POLICIES:
            raise SettingsError(
                f"model_service_balancing must be one of {', '.join(BALANCING_POLICIES)}"
            )
        sqlite_path(self.store, self.data_dir)
        if not 1 <= self.store_pool_min <= self.store_pool_max <= 1000:
            raise SettingsError("need 1 <= store_pool_min <= store_pool_max <= 1000")
        if not 0 < self.store_timeout <= 600:
            raise SettingsError("store_timeout must be within 0..600 seconds")
        if not 60 <= self.request_id_ttl <= 30 * 86400:
            raise SettingsError("request_id_ttl must be within 60 seconds and 30 days")
        if not 0.3 <= self.turn_lease <= 3600:
            raise SettingsError("turn_lease must be within 0.3..3600 seconds")
        if bool(self.model_service_tls_cert) != bool(self.model_service_tls_key):
            raise SettingsError("model_service_tls_cert and model_service_tls_key go together")
        if self.model_service_tls_cert and not self.model_service_tls_ca:
            raise SettingsError("mutual TLS to the model-service needs model_service_tls_ca")
        if not 0 < self.model_timeout <= 86400:
            raise SettingsError("model_timeout must be within 0..86400 seconds")
        for root in self.trust_root_paths():
            if not root.is_absolute():
                raise SettingsError(f"trust_roots must be absolute paths, not {str(root)!r}")
        limits = (self.max_item_bytes, self.max_turn_bytes, self.max_instructions_bytes)
        fits = max(limits) <= self.max_history_bytes <= MAX_HISTORY_CAP
        if min(limits) <= 0 or not fits:
            raise SettingsError(
                "need 0 < max_item_bytes, max_turn_bytes, max_instructions_bytes "
                f"<= max_history_bytes <= {MAX_HISTORY_CAP}"
            )
        if self.rate_limit_requests < 0 or self.rate_limit_tokens < 0:
            raise SettingsError("rate limits must be 0 (off) or positive")

    def trust_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in self.trust_roots.split(os.pathsep) if p)
