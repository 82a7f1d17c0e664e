"""Test set-up: every dialect test runs on SQLite, PostgreSQL and MariaDB.

SQLite always runs.  PostgreSQL and MariaDB run when they answer; with
``CI=true`` a server that does not answer fails the run instead of skipping,
so a green CI always means three databases.  URLs come from
``SQLA_SYNC_TEST_POSTGRES_URL`` and ``SQLA_SYNC_TEST_MARIADB_URL``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SAWarning

from sqla_sync.tables import metadata as sync_metadata

warnings.simplefilter("error", SAWarning)

POSTGRES_URL = os.environ.get(
    "SQLA_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "SQLA_SYNC_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
#: The schema of a second tenant in schema tests.  On MariaDB a schema is a
#: database, which is server-wide: named after the test database, so that runs
#: against two test databases of one server never drop each other's tenant.
TENANT = "sqla_sync_tenant_" + re.sub(r"\W", "_", make_url(MARIADB_URL).database or "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

DIALECTS = ["sqlite", "postgresql", "mariadb"]
_reachable: dict[str, str | None] = {}


def _server_url(name: str) -> str:
    return POSTGRES_URL if name == "postgresql" else MARIADB_URL


def _check(name: str) -> str | None:
    """None when the server answers, else the reason it does not."""
    if name not in _reachable:
        engine = create_engine(_server_url(name), connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _reachable[name] = None
        except Exception as exc:  # any driver error means "not reachable"
            _reachable[name] = f"{name} not reachable at {_server_url(name)}: {exc}"
        finally:
            engine.dispose()
    return _reachable[name]


def make_engine(name: str, tmp_path: Path, **kw: Any) -> Engine:
    """An engine on a fresh database of dialect ``name`` (skip/fail if unreachable)."""
    if name == "sqlite":
        return create_engine(f"sqlite:///{tmp_path / 'local.db'}", **kw)
    reason = _check(name)
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return create_engine(_server_url(name), **kw)


def reset_schema(engine: Engine, *metadatas: Any) -> None:
    """Drop and create the given metadata (and the sync tables) on ``engine``."""
    with engine.begin() as conn:
        for md in (*metadatas, sync_metadata):
            md.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        for md in (sync_metadata, *metadatas):
            md.create_all(conn)


def create_tenant(engine: Engine, tmp_path: Path) -> Engine:
    """A fresh empty schema :data:`TENANT` next to ``engine``'s default one
    (on SQLite an attached database file, attached to every new connection),
    and ``engine`` with ``schema_translate_map={None: TENANT}``."""
    name = engine.dialect.name
    if name == "sqlite":
        engine.dispose()

        @event.listens_for(engine, "connect")
        def attach(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.execute(f"ATTACH DATABASE '{tmp_path / 'tenant.db'}' AS {TENANT}")
    else:
        drop_tenant(engine)  # left by an interrupted run
        with engine.begin() as conn:
            conn.execute(text(f"CREATE {_SCHEMA_WORD[name]} {TENANT}"))
    return engine.execution_options(schema_translate_map={None: TENANT})


def drop_tenant(engine: Engine) -> None:
    """Drop the schema :func:`create_tenant` made, with everything in it."""
    name = engine.dialect.name
    if name != "sqlite":
        with engine.begin() as conn:
            conn.execute(text(f"DROP {_SCHEMA_WORD[name]} IF EXISTS {TENANT}"
                              + (" CASCADE" if name == "postgresql" else "")))


_SCHEMA_WORD = {"postgresql": "SCHEMA", "mysql": "DATABASE", "mariadb": "DATABASE"}


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """The name of the database the test runs on."""
    return str(request.param)


@pytest.fixture
def engine(dialect: str, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database with the test models and the sync tables."""
    from tests.models import Base

    eng = make_engine(dialect, tmp_path)
    reset_schema(eng, Base.metadata)
    yield eng
    eng.dispose()


class StatementCounter:
    """Counts statements sent to the database, as SQLAlchemy-Continuum's tests do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    def _on(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


class FakeClock:
    """A clock tests move by hand, so that times in the outbox are exact."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
