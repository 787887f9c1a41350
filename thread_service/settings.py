"""The thread-service's settings: `[thread_service]` in config.toml, `SPINDLE_*`
variables and flags (see `spindle.settings` for the precedence)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from spindle.settings import DEFAULT_CONFIG_HOME, ServiceSettings, SettingsError, setting
from thread_service.model_client import BALANCING_POLICIES
from thread_service.stores.backend import sqlite_path

SQLITE_SYNCHRONOUS_MODES = ("FULL", "EXTRA", "NORMAL")


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
    sqlite_synchronous: str = setting(
        "FULL", "SPINDLE_SQLITE_SYNCHRONOUS", "SQLite synchronous mode: FULL, EXTRA or NORMAL"
    )

    def validate(self) -> None:
        super().validate()
        if self.max_spawn_depth < 0:
            raise SettingsError("max_spawn_depth must be 0 or more")
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
        if not 0.3 <= self.turn_lease <= 3600:
            raise SettingsError("turn_lease must be within 0.3..3600 seconds")
