"""An engine with ``schema_translate_map`` (one schema per tenant): capture,
queue depth, push and pull all read and write that schema's tables, never the
default one's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from examples.server.run import BackendServer
from sqla_sync import Schedule, SyncConfig, start_sync, track, untrack
from sqla_sync.capture import write_ops
from sqla_sync.outbox import pending_ops, queue_depth
from sqla_sync.tables import metadata as sync_metadata
from sqla_sync.tables import outbox, shadow
from tests.conftest import TENANT, create_tenant, drop_tenant, make_engine, reset_schema
from tests.models import Article, Base
from tests.test_engine import routes


@pytest.fixture
def tenant(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """``engine`` with ``schema_translate_map={None: TENANT}``; the test models
    and the sync tables exist in both the default schema and the tenant's."""
    mapped = create_tenant(engine, tmp_path)
    reset_schema(mapped, Base.metadata)
    yield mapped
    with mapped.begin() as conn:
        Base.metadata.drop_all(conn)
        sync_metadata.drop_all(conn)
    drop_tenant(engine)


def rows_of(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table)))


def test_capture_push_and_pull_stay_in_the_mapped_schema(engine: Engine, tenant: Engine) -> None:
    maker = track(sessionmaker(tenant, expire_on_commit=False))
    try:
        with maker() as s:
            s.add_all([Article(id="a1", title="one"), Article(id="a2", title="two")])
            s.commit()
            s.get(Article, "a1").title = "one, edited"  # type: ignore[union-attr]
            s.commit()
        with tenant.connect() as conn:
            assert sorted((op.row_key, op.op) for op in pending_ops(conn)) == [
                ('["a1"]', "insert"), ('["a2"]', "insert")]
            assert queue_depth(conn) == 2
        assert rows_of(engine, outbox) == []  # nothing in the default schema
        with engine.connect() as conn:
            assert queue_depth(conn) == 0

        with BackendServer() as server:
            server.store.seed("posts", [{"id": "r1", "title": "from server"}])
            config = SyncConfig(base_url=server.url, routes=routes(),
                                sync=Schedule(interval=3600.0, push_concurrency=1))
            with start_sync(tenant, config) as sync:
                result = sync.sync()
                assert (result.pulled, result.pushed, result.failed) == (1, 2, 0)
                assert sync.queue_depth() == 0
            assert sorted(r["title"] for r in server.store.rows("posts")) == [
                "from server", "one, edited", "two"]
        with Session(tenant) as s:
            assert sorted(a.id for a in s.scalars(select(Article))) == ["a1", "a2", "r1"]
        assert len(rows_of(tenant, shadow)) == 3
        assert rows_of(engine, shadow) == [] and rows_of(engine, outbox) == []
        with Session(engine) as s:
            assert s.scalars(select(Article)).all() == []
    finally:
        untrack(maker)


def test_a_statement_s_own_schema_translate_map_moves_its_ops(
        engine: Engine, tenant: Engine) -> None:
    maker = track(sessionmaker(engine))
    to_tenant = {"schema_translate_map": {None: TENANT}}
    try:
        with maker() as s:
            s.execute(insert(Article), [{"id": "a1", "title": "t"}, {"id": "a2", "title": "t"}],
                      execution_options=to_tenant)
            s.commit()
        with tenant.begin() as conn:
            conn.execute(delete(outbox))
        with maker() as s:
            s.execute(update(Article).where(Article.id == "a1").values(title="u"),
                      execution_options=to_tenant)
            s.commit()
        with tenant.connect() as conn:
            assert [(op.row_key, op.op) for op in pending_ops(conn)] == [('["a1"]', "update")]
        assert rows_of(engine, outbox) == []
    finally:
        untrack(maker)


def test_postgresql_counting_follows_the_outbox_not_the_search_path(tmp_path: Path) -> None:
    """Tables created under ``search_path=<tenant>`` (an alembic-per-tenant
    set-up), written by an application that maps the schema instead: the
    trigger must count into the tenant's counters, whatever the writer's
    search_path."""
    engine = make_engine("postgresql", tmp_path)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {TENANT} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {TENANT}"))
        conn.execute(text(f"SET LOCAL search_path = {TENANT}"))
        sync_metadata.create_all(conn)
    mapped = engine.execution_options(schema_translate_map={None: TENANT})
    try:
        with mapped.begin() as conn:
            write_ops(conn, [("posts", f'["p{i}"]', "insert", 1, None, 1.0, 1.0)
                             for i in range(3)])
        with mapped.connect() as conn:
            assert queue_depth(conn) == len(pending_ops(conn)) == 3
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {TENANT} CASCADE"))
        engine.dispose()
