"""Choosing a store backend from the `store` setting, and opening it.

- `sqlite:///abs/path/spindle.sqlite3` (the default is `spindle.sqlite3` in
  the data directory): embedded, owned by one process.
- `postgresql://user@host:port/dbname` (or `postgres://`): shared by any
  number of thread-service replicas. Give the password through `PGPASSWORD`
  or `~/.pgpass` rather than in the URL, which shows in process listings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spindle.settings import SettingsError
from thread_service.store import Store
from thread_service.stores.postgres import PostgresStore
from thread_service.stores.sqlite import SQLiteStore

SQLITE_FILE_NAME = "spindle.sqlite3"


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What opening a store needs beyond its URL."""

    data_dir: Path
    sqlite_synchronous: str = "FULL"
    pool_min: int = 1
    pool_max: int = 10
    timeout: float = 5.0


def sqlite_path(url: str, data_dir: Path) -> Path | None:
    """The SQLite file a store URL names, or None for a PostgreSQL URL.
    SettingsError for anything else."""
    if not url:
        return data_dir / SQLITE_FILE_NAME
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        return None
    if scheme == "sqlite" and sep and rest.startswith("/") and len(rest) > 1:
        return Path(rest).expanduser()
    raise SettingsError(
        "store must be sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST/DB, "
        f"not a {scheme or 'bare'} URL"
    )


async def open_store(url: str, options: StoreOptions) -> Store:
    path = sqlite_path(url, options.data_dir)
    if path is not None:
        return await SQLiteStore.open(path, options.sqlite_synchronous)
    return await PostgresStore.open(
        url, min_size=options.pool_min, max_size=options.pool_max, pool_timeout=options.timeout
    )
