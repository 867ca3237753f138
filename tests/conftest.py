"""Shared fixtures: a real Mosquitto with the project's own config, ACL and fresh passwords; the
record on SQLite and on a real PostgreSQL (a database of the test run's own, dropped at its end)."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

from services.context.record import RecordStore, open_record
from tests.helpers import OPEN
from uns.broker import Mosquitto

# The PostgreSQL the tests use (make test starts Debian's when it is not running): its URL is for a
# role that may create databases. Each test process makes a database of its own, a schema per test.
POSTGRES = os.environ.get("UNS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _stop_mqtt_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().stop()


@pytest.fixture
async def _stop_mqtt_clients_on_the_loop() -> AsyncIterator[None]:
    """An async test's clients are stopped on its own loop while it still runs, so that a connection
    one was making or closing (a TLS handshake, say) is closed before the loop ends."""
    yield
    while OPEN:
        OPEN.pop().stop()
    await asyncio.sleep(0.01)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_async_test(item) and isinstance(item, pytest.Function):
            item.fixturenames.append("_stop_mqtt_clients_on_the_loop")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto", "acme")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A database of this test process's own on the tests' PostgreSQL, dropped at the end: its URL."""
    import psycopg

    name = f"uns_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(f"the tests' PostgreSQL at UNS_TEST_POSTGRES={POSTGRES!r} cannot be reached: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = psycopg.conninfo.make_conninfo(POSTGRES, dbname=name)
        try:
            yield url
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


_SCHEMAS = itertools.count()


def _new_schema(url: str) -> str:
    """A new empty schema in the tests' database: the URL of a record in it."""
    import psycopg

    schema = f"t{os.getpid()}_{next(_SCHEMAS)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return postgres_url(url, schema=schema)


def postgres_url(
    url: str, *, dbname: str | None = None, port: int | None = None, schema: str | None = None
) -> str:
    """The URL of the tests' PostgreSQL with another database, port or schema (search_path)."""
    import psycopg

    parts = psycopg.conninfo.conninfo_to_dict(url)
    user, host = parts.get("user", "postgres"), parts.get("host", "127.0.0.1")
    out = f"postgresql://{user}@{host}:{port or parts.get('port', 5432)}/{dbname or parts['dbname']}"
    return out + (f"?options=-csearch_path%3D{schema}" if schema else "")


@pytest.fixture
def pg_url(postgres_db: str) -> str:
    """The URL of a record in an empty schema of the tests' database, for one test."""
    return _new_schema(postgres_db)


@pytest.fixture(params=["sqlite", "postgresql"])
def record_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_record(
    record_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RecordStore]]:
    """Opens the record the test names (`make_record("night")`; the same name again: the same record)
    on SQLite and, in the test's second run, on PostgreSQL; all closed at the end."""
    opened: list[RecordStore] = []
    places: dict[str, str] = {}

    def make(name: str = "record") -> RecordStore:
        if name not in places:
            if record_backend == "postgresql":
                places[name] = _new_schema(request.getfixturevalue("postgres_db"))
            else:
                places[name] = str(tmp_path / f"{name}.db")
        store = open_record(places[name])
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
