"""The alembic branch creates exactly the tables of ``sqla_sync.tables`` and removes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, delete, inspect, text

from sqla_sync.capture import write_ops
from sqla_sync.outbox import bury, dead_letter_count, pending_ops, queue_depth
from sqla_sync.tables import metadata, outbox
from tests.conftest import TENANT, create_tenant, drop_tenant, reset_schema
from tests.models import Base

SYNC_TABLES = {"sqla_sync_outbox", "sqla_sync_counters", "sqla_sync_checkpoints",
               "sqla_sync_rows", "sqla_sync_leases"}

APP_ENV = '''
from alembic import context
connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None,
                  version_table_schema=context.config.attributes.get("version_table_schema"))
with context.begin_transaction():
    context.run_migrations()
'''

APP_REVISION = '''
"""the application's own table"""
import sqlalchemy as sa
from alembic import op
revision = "app0001"
down_revision = None
branch_labels = ("app",)
depends_on = None
def upgrade():
    op.create_table("app_things", sa.Column("id", sa.Integer, primary_key=True))
def downgrade():
    op.drop_table("app_things")
'''


def app_alembic(tmp_path: Path) -> Config:
    """An application's alembic setup that lists the library's branch in version_locations."""
    script = tmp_path / "alembic"
    (script / "versions").mkdir(parents=True)
    (script / "env.py").write_text(APP_ENV)
    (script / "versions" / "app0001_things.py").write_text(APP_REVISION)
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\n"
        "path_separator = space\n"
        f"script_location = {script}\n"
        f"version_locations = {script / 'versions'} sqla_sync.migrations:versions\n"
    )
    return Config(str(ini))


def clean(engine: Engine) -> None:
    """No sync, application or alembic table left, even by an interrupted run."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS app_things"))
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


def _status_index_is_partial(engine: Engine) -> bool:
    """Whether the outbox's (status, id) index holds dead letters only (alembic's
    comparison does not look at an index's WHERE)."""
    if engine.dialect.name != "sqlite":
        return False
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    master = "sqlite_master" if schema is None else f"{schema}.sqlite_master"
    with engine.connect() as conn:
        sql = conn.exec_driver_sql(f"SELECT sql FROM {master} "
                                   "WHERE name = 'ix_sqla_sync_outbox_status_id'").scalar_one()
    return str(sql).endswith("WHERE status = 'dead'")


def test_upgrade_then_downgrade(engine: Engine, tmp_path: Path) -> None:
    clean(engine)
    cfg = app_alembic(tmp_path)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    names = set(inspect(engine).get_table_names())
    assert SYNC_TABLES | {"app_things"} <= names
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, kind, parent: kind != "table"
                  or str(name).startswith("sqla_sync_")},
        )
        diffs = compare_metadata(context, metadata)
    assert diffs == []
    assert _status_index_is_partial(engine) == (engine.dialect.name == "sqlite")
    # The migrated outbox keeps its queue depth like a created one (triggers
    # on PostgreSQL and MariaDB).
    with engine.begin() as conn:
        write_ops(conn, [("posts", f'["p{i}"]', "insert", 1, None, 1.0, 1.0) for i in range(3)])
        conn.execute(delete(outbox).where(outbox.c.row_key == '["p0"]'))
        assert queue_depth(conn) == 2

    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "sqla_sync@base")
    names = set(inspect(engine).get_table_names())
    assert not SYNC_TABLES & names
    assert "app_things" in names  # the application's branch is left alone

    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "app@base")
    reset_schema(engine, Base.metadata)


def test_upgrade_counts_the_ops_already_pending(engine: Engine, tmp_path: Path) -> None:
    """An outbox created at the first revision, with ops in it, keeps an exact
    queue depth after the upgrade that added counting on PostgreSQL."""
    clean(engine)
    cfg = app_alembic(tmp_path)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "a1f0c0de0001")
            write_ops(conn, [("posts", f'["p{i}"]', "insert", 1, None, 1.0, 1.0)
                             for i in range(6)])
            bury(conn, [{"op_id": pending_ops(conn)[-1].id, "attempts": 5, "last_error": "x"}])
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        assert _status_index_is_partial(engine) == (engine.dialect.name == "sqlite")
        with engine.begin() as conn:
            assert queue_depth(conn) == 5
            assert dead_letter_count(conn) == 1
            write_ops(conn, [("posts", '["p9"]', "insert", 1, None, 1.0, 1.0)])
            conn.execute(delete(outbox).where(outbox.c.row_key.in_(['["p0"]', '["p1"]'])))
        with engine.connect() as conn:
            assert queue_depth(conn) == 4
        # One revision down, SQLite indexes every op by status again.
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "a1f0c0de0002")
        assert not _status_index_is_partial(engine)
        with engine.connect() as conn:
            assert queue_depth(conn) == len(pending_ops(conn)) == 4
            assert dead_letter_count(conn) == 1
    finally:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "sqla_sync@base")
            command.downgrade(cfg, "app@base")
        reset_schema(engine, Base.metadata)


def test_migrations_follow_the_connection_s_schema_translate_map(
        engine: Engine, tmp_path: Path) -> None:
    """An application whose env.py hands alembic a connection with
    ``schema_translate_map={None: tenant}`` (a schema per tenant) gets every
    sync table, trigger and index in the tenant's schema, and the queue depth
    counts there; the default schema is left alone, up and down."""
    name = engine.dialect.name
    tenant = create_tenant(engine, tmp_path)
    clean(engine)
    cfg = app_alembic(tmp_path)
    # alembic finds its version table through the schema it is told, not the map.
    cfg.attributes["version_table_schema"] = TENANT
    try:
        with tenant.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "a1f0c0de0001")
            _insert_ops(conn, "p0", "p1", "p2")
        with tenant.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        assert SYNC_TABLES <= set(inspect(engine).get_table_names(schema=TENANT))
        assert not SYNC_TABLES & set(inspect(engine).get_table_names())
        assert _status_index_is_partial(tenant) == (name == "sqlite")
        with tenant.begin() as conn:
            assert queue_depth(conn) == 3
            _insert_ops(conn, "p3")
            conn.execute(delete(outbox).where(outbox.c.row_key == '["p0"]'))
        with tenant.connect() as conn:
            assert queue_depth(conn) == len(pending_ops(conn)) == 3

        with tenant.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "sqla_sync@base")
        assert not SYNC_TABLES & set(inspect(engine).get_table_names(schema=TENANT))
        assert not _leftover_counting(engine)
    finally:
        with tenant.begin() as conn:
            metadata.drop_all(conn)
            for table in ("app_things", "alembic_version"):
                conn.execute(text(f"DROP TABLE IF EXISTS {TENANT}.{table}"))
        drop_tenant(engine)
        reset_schema(engine, Base.metadata)


def _insert_ops(conn: Any, *keys: str) -> None:
    write_ops(conn, [("posts", f'["{k}"]', "insert", 1, None, 1.0, 1.0) for k in keys])


def _leftover_counting(engine: Engine) -> list[str]:
    """Counting triggers or functions left in the tenant's schema."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            sql = ("SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname = :schema AND t.tgname LIKE 'sqla_sync_%' UNION ALL "
                   "SELECT p.proname FROM pg_proc p JOIN pg_namespace n "
                   "ON n.oid = p.pronamespace WHERE n.nspname = :schema "
                   "AND p.proname LIKE 'sqla_sync_%'")
        elif engine.dialect.name == "sqlite":
            return []
        else:
            sql = ("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                   "WHERE TRIGGER_SCHEMA = :schema AND TRIGGER_NAME LIKE 'sqla_sync_%'")
        return [str(n) for (n,) in conn.execute(text(sql), {"schema": TENANT})]
