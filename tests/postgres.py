"""A PostgreSQL server for the tests: each test that needs one gets a fresh
database on the server named by SPINDLE_TEST_POSTGRES (`eval
"$(scripts/postgres-test-server)"` starts one and sets it). Without it the
tests skip, saying so, unless SPINDLE_REQUIRE_POSTGRES=1 (set by .ci/run)
makes that a failure."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER_ENV = "SPINDLE_TEST_POSTGRES"
REQUIRE_ENV = "SPINDLE_REQUIRE_POSTGRES"


def server_url() -> str:
    url = os.environ.get(SERVER_ENV, "")
    if url:
        return url
    reason = (
        f"no PostgreSQL server: set {SERVER_ENV}=postgresql://USER@HOST:PORT/DB "
        '(eval "$(scripts/postgres-test-server)" starts one)'
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


@contextmanager
def fresh_database(server: str, prefix: str = "spindle_test_") -> Iterator[str]:
    """The URL of a new, empty database on the server, dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    with fresh_database(server_url()) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    """thread-service flags for each store backend: the default SQLite file in
    the data directory, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return []
    url: str = request.getfixturevalue("postgres_url")
    return ["--store", url]
