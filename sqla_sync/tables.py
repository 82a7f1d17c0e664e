"""The library's own tables, on their own :class:`~sqlalchemy.MetaData`.

* ``sqla_sync_outbox``: one row per pending change.  Compaction folds a new
  change into the pending op of the same row while that op sits in *lane* 0;
  claiming an op for a push moves it to its own lane (its id), so a change made
  while a request is in flight starts a new op instead of being folded into one
  the server may already have applied.
* ``sqla_sync_checkpoints``: pull positions, name -> JSON value.
* ``sqla_sync_rows``: the shadow: per synced row the server's key, version or
  ETag and last known server state.
* ``sqla_sync_leases``: the leader lease with its fencing token.

:func:`create_tables` creates them for quick starts; the alembic revision
branch ``sqla_sync`` in ``sqla_sync.migrations`` is the path for real
deployments.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Connection

__all__ = [
    "OP_DELETE",
    "OP_INSERT",
    "OP_UPDATE",
    "STATUS_DEAD",
    "STATUS_PENDING",
    "checkpoints",
    "counters",
    "counting_ddl",
    "create_tables",
    "drop_tables",
    "leases",
    "metadata",
    "outbox",
    "shadow",
]

#: Naming convention so that constraint names are the same on every dialect
#: and in the alembic migration.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Operation codes stored in ``sqla_sync_outbox.op``.
OP_INSERT = "insert"
OP_UPDATE = "update"
OP_DELETE = "delete"

#: Outbox statuses: waiting to be pushed (claimed ones included), given up on.
STATUS_PENDING = "pending"
STATUS_DEAD = "dead"

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

outbox = Table(
    "sqla_sync_outbox",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("table_name", String(64), nullable=False),
    Column("row_key", String(500), nullable=False),
    # 0 while the op can absorb later changes; the op's own id once claimed.
    Column("lane", BigInteger, nullable=False, server_default=text("0")),
    Column("op", String(8), nullable=False),
    # Bit i set: the model's i-th synced column changed (see capture.ModelInfo).
    Column("changed", BigInteger, nullable=False, server_default=text("0")),
    # JSON row state stored at capture (deletes); other ops read the row at push.
    Column("state", Text, nullable=True),
    Column("changed_at", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("idempotency_key", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", Double, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    # Defaults live in the database: capture sends only what it knows.
    Column("status", String(10), nullable=False, server_default=text(f"'{STATUS_PENDING}'")),
    # Set when a push claims the op (its lane is then its id), cleared on release.
    Column("claimed_at", Double, nullable=True),
    Index(None, "table_name", "row_key", "lane", unique=True),
    # Dead letters by id.  On SQLite only them (pending ops are read in order
    # of the table's own rowid): a commit of new ops then writes no page of
    # this index.  MySQL/MariaDB have no partial index; there, and on
    # PostgreSQL, it also serves pending ops in order.
    Index(None, "status", "id", sqlite_where=text(f"status = '{STATUS_DEAD}'")),
)

#: Pending-op counts kept by triggers on PostgreSQL and MySQL/MariaDB, where
#: counting a million index entries takes far longer than 50 ms: one row per
#: database session (``slot``: its backend pid or connection id), so that
#: concurrent transactions never update the same row, and ``queue_depth`` is
#: the sum of a handful of rows.  Exact: the rows change in the transaction
#: that changes the outbox.  :func:`~sqla_sync.outbox.fold_counters` folds
#: the rows of past sessions into slot 0.  SQLite counts (see
#: ``outbox.queue_depth``); the table exists there too, empty.
counters = Table(
    "sqla_sync_counters",
    metadata,
    Column("slot", BigInteger, primary_key=True, autoincrement=False),
    Column("pending", BigInteger, nullable=False),
)

checkpoints = Table(
    "sqla_sync_checkpoints",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("value", Text, nullable=True),
    Column("updated_at", Double, nullable=False),
)

shadow = Table(
    "sqla_sync_rows",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("row_key", String(500), primary_key=True),
    Column("server_key", String(500), nullable=True),
    Column("version", String(255), nullable=True),
    Column("state", Text, nullable=True),
    Column("synced_at", Double, nullable=False),
    Index(None, "table_name", "server_key"),
)

leases = Table(
    "sqla_sync_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(255), nullable=True),
    Column("expires_at", Double, nullable=False),
    Column("token", BigInteger, nullable=False),
)


def counting_ddl(
    dialect_name: str, schema: str | None = None, quote: Any = None
) -> tuple[list[str], list[str]]:
    """The statements that install, and remove, the triggers that keep
    ``sqla_sync_counters`` in step with the pending ops of the outbox.

    MySQL/MariaDB: row triggers that add to the connection's counter row.
    PostgreSQL: statement triggers that count the transition table of an
    INSERT or DELETE once per statement (a row trigger there updates the same
    counter row once per row, and PostgreSQL keeps every one of those row
    versions until the transaction ends: a 20,000-row flush took 7x as long),
    and a row trigger for status changes that only runs when the status
    changes (dead letters).  Capture writes each flush as one statement.

    :param dialect_name: ``postgresql``, ``mysql`` or ``mariadb``; any other
        dialect gets no triggers.
    :param schema: the schema the outbox lives in, None for the default one.
    :param quote: the dialect's ``identifier_preparer.quote``.
    :return: (statements run after the outbox is created, before it is dropped).
    """
    def name(table: str) -> str:
        if schema is None:
            return table
        return f"{quote(schema) if quote else schema}.{table}"

    box, count = name("sqla_sync_outbox"), name("sqla_sync_counters")
    if dialect_name == "postgresql":
        function = name("sqla_sync_count_pending")
        upsert = f"INSERT INTO {count} AS c (slot, pending) VALUES (pg_backend_pid(), delta) "  # noqa: S608
        body = (
            "DECLARE delta bigint; BEGIN "  # noqa: S608 - quoted names, no input
            "IF TG_OP = 'INSERT' THEN "
            "SELECT count(*) INTO delta FROM new_ops WHERE status = 'pending'; "
            "ELSIF TG_OP = 'DELETE' THEN "
            "SELECT -count(*) INTO delta FROM old_ops WHERE status = 'pending'; "
            "ELSE delta := (NEW.status = 'pending')::int - (OLD.status = 'pending')::int; "
            "END IF; "
            "IF delta <> 0 THEN "
            + upsert
            + "ON CONFLICT (slot) DO UPDATE SET pending = c.pending + EXCLUDED.pending; "
            "END IF; RETURN NULL; END"
        )
        return [
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ {body} $$",
            f"CREATE TRIGGER sqla_sync_outbox_insert AFTER INSERT ON {box} "
            f"REFERENCING NEW TABLE AS new_ops FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
            f"CREATE TRIGGER sqla_sync_outbox_delete AFTER DELETE ON {box} "
            f"REFERENCING OLD TABLE AS old_ops FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
            f"CREATE TRIGGER sqla_sync_outbox_status AFTER UPDATE ON {box} FOR EACH ROW "
            f"WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION {function}()",
        ], [
            f"DROP TRIGGER IF EXISTS sqla_sync_outbox_status ON {box}",
            f"DROP TRIGGER IF EXISTS sqla_sync_outbox_delete ON {box}",
            f"DROP TRIGGER IF EXISTS sqla_sync_outbox_insert ON {box}",
            f"DROP FUNCTION IF EXISTS {function}()",
        ]
    if dialect_name in ("mysql", "mariadb"):
        status_delta = "(NEW.status = 'pending') - (OLD.status = 'pending')"

        def add(delta: str) -> str:
            return (f"INSERT INTO {count} (slot, pending) "  # noqa: S608 - quoted names
                    f"VALUES (CONNECTION_ID(), {delta}) "
                    f"ON DUPLICATE KEY UPDATE pending = pending + VALUES(pending)")

        return [
            f"CREATE TRIGGER {name('sqla_sync_outbox_insert')} AFTER INSERT ON {box} "
            f"FOR EACH ROW IF NEW.status = 'pending' THEN {add('1')}; END IF",
            f"CREATE TRIGGER {name('sqla_sync_outbox_delete')} AFTER DELETE ON {box} "
            f"FOR EACH ROW IF OLD.status = 'pending' THEN {add('-1')}; END IF",
            f"CREATE TRIGGER {name('sqla_sync_outbox_status')} AFTER UPDATE ON {box} "
            f"FOR EACH ROW IF NOT (OLD.status <=> NEW.status) THEN "
            f"{add(status_delta)}; END IF",
        ], [
            f"DROP TRIGGER IF EXISTS {name('sqla_sync_outbox_status')}",
            f"DROP TRIGGER IF EXISTS {name('sqla_sync_outbox_delete')}",
            f"DROP TRIGGER IF EXISTS {name('sqla_sync_outbox_insert')}",
        ]
    return [], []


def _counting(conn: Connection, drop: bool) -> None:
    schema = conn.schema_for_object(outbox)
    if schema is None and conn.dialect.name == "postgresql":
        # The trigger function runs under the writer's search_path, which
        # need not be the one the tables were created under: name the schema.
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    preparer = conn.dialect.identifier_preparer
    create, remove = counting_ddl(conn.dialect.name, schema, preparer.quote)
    for statement in remove if drop else create:
        conn.exec_driver_sql(statement)


@event.listens_for(outbox, "after_create")
def _install_counting(target: Table, connection: Connection, **kw: Any) -> None:
    _counting(connection, drop=False)


@event.listens_for(outbox, "before_drop")
def _remove_counting(target: Table, connection: Connection, **kw: Any) -> None:
    _counting(connection, drop=True)


def _has_counting(conn: Connection, schema: str | None) -> bool:
    if conn.dialect.name == "postgresql":
        sql = ("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
               "JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE t.tgname = 'sqla_sync_outbox_insert' AND c.relname = 'sqla_sync_outbox' "
               "AND n.nspname = coalesce(%(schema)s, current_schema())")
        found = conn.exec_driver_sql(sql, {"schema": schema}).scalar_one()
    else:
        sql = ("SELECT count(*) FROM information_schema.TRIGGERS "
               "WHERE TRIGGER_NAME = 'sqla_sync_outbox_insert' "
               "AND TRIGGER_SCHEMA = coalesce(%(schema)s, DATABASE())")
        found = conn.exec_driver_sql(sql, {"schema": schema}).scalar_one()
    return bool(found)


def _ensure_counting(conn: Connection) -> None:
    """Install the counting triggers on an outbox created without them (by a
    version of the library that had none for this dialect), and start the
    counters from the ops already pending."""
    if conn.dialect.name not in ("postgresql", "mysql", "mariadb"):
        return
    schema = conn.schema_for_object(outbox)
    if _has_counting(conn, schema):
        return
    quote = conn.dialect.identifier_preparer.quote
    box = quote(outbox.name) if schema is None else f"{quote(schema)}.{quote(outbox.name)}"
    if conn.dialect.name == "postgresql":
        # Writers wait until the triggers and the starting count are in place.
        conn.exec_driver_sql(f"LOCK TABLE {box} IN SHARE ROW EXCLUSIVE MODE")
    _counting(conn, drop=False)
    conn.execute(counters.delete())
    conn.execute(counters.insert().from_select(
        ["slot", "pending"],
        select(literal(0), func.count()).select_from(outbox)
        .where(outbox.c.status == STATUS_PENDING)))


def _ensure_dead_index(conn: Connection) -> None:
    """SQLite: make an outbox's ``(status, id)`` index, created by a version
    of the library that indexed every op by status, hold only dead letters;
    create it when it is missing (a rebuild cut short: pysqlite commits the
    DROP INDEX on its own)."""
    if conn.dialect.name != "sqlite":
        return
    index = next(i for i in outbox.indexes if [c.name for c in i.columns] == ["status", "id"])
    schema = conn.schema_for_object(outbox)
    master = "sqlite_master" if schema is None else (
        f"{conn.dialect.identifier_preparer.quote_schema(schema)}.sqlite_master")
    sql = conn.exec_driver_sql(
        f"SELECT sql FROM {master} WHERE type = 'index' AND name = ?",  # noqa: S608
        (str(index.name),),
    ).scalar_one_or_none()
    if sql is None:
        index.create(conn)
    elif " WHERE " not in sql.upper():
        index.drop(conn)
        index.create(conn)


def create_tables(bind: Engine | Connection) -> None:
    """Create the sync tables that do not exist yet.

    A quick start for scripts and tests; applications with alembic should run
    the ``sqla_sync`` revision branch instead, so that later schema changes of
    the library arrive as migrations.  An outbox created before the library
    kept its queue depth by triggers on this database gets them now, counting
    from the ops already pending; on SQLite, an outbox that indexed every op
    by status indexes only its dead letters from now on.

    :param bind: the engine or connection of the application's database.
    """
    if isinstance(bind, Connection):
        metadata.create_all(bind)
        _ensure_counting(bind)
        _ensure_dead_index(bind)
    else:
        with bind.begin() as conn:
            metadata.create_all(conn)
            _ensure_counting(conn)
            _ensure_dead_index(conn)


def drop_tables(bind: Engine | Connection) -> None:
    """Drop the sync tables (pending changes are lost); the reverse of :func:`create_tables`."""
    if isinstance(bind, Connection):
        metadata.drop_all(bind)
    else:
        with bind.begin() as conn:
            metadata.drop_all(conn)
