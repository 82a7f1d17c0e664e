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
    Index(None, "status", "id"),
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


def create_tables(bind: Engine | Connection) -> None:
    """Create the sync tables that do not exist yet.

    A quick start for scripts and tests; applications with alembic should run
    the ``sqla_sync`` revision branch instead, so that later schema changes of
    the library arrive as migrations.

    :param bind: the engine or connection of the application's database.
    """
    if isinstance(bind, Connection):
        metadata.create_all(bind)
    else:
        with bind.begin() as conn:
            metadata.create_all(conn)


def drop_tables(bind: Engine | Connection) -> None:
    """Drop the sync tables (pending changes are lost); the reverse of :func:`create_tables`."""
    if isinstance(bind, Connection):
        metadata.drop_all(bind)
    else:
        with bind.begin() as conn:
            metadata.drop_all(conn)
