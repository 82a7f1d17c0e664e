"""sqla_sync tables: outbox, counters, checkpoints, rows (shadow), leases

Revision ID: a1f0c0de0001
Revises:
Create Date: 2026-11-26 10:30:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1f0c0de0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("sqla_sync",)
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _prefix() -> str:
    """The quoted schema the tables go to, and a dot, when alembic's connection
    has a ``schema_translate_map`` for it (raw SQL does not follow the map);
    else nothing: unqualified names then resolve as the tables' did."""
    bind = op.get_bind()
    schema = bind.schema_for_object(sa.Table("sqla_sync_outbox", sa.MetaData()))
    return "" if schema is None else f"{bind.dialect.identifier_preparer.quote_schema(schema)}."


def _counting(dialect: str) -> tuple[list[str], list[str]]:
    """Triggers that keep sqla_sync_counters in step with the pending ops (as
    ``sqla_sync.tables.counting_ddl`` at this revision); only on MySQL/MariaDB."""
    if dialect in ("mysql", "mariadb"):
        p = _prefix()

        def add(delta: str) -> str:
            return (f"INSERT INTO {p}sqla_sync_counters (slot, pending) "  # noqa: S608
                    f"VALUES (CONNECTION_ID(), {delta}) "
                    "ON DUPLICATE KEY UPDATE pending = pending + VALUES(pending)")

        status_delta = "(NEW.status = 'pending') - (OLD.status = 'pending')"
        return [
            f"CREATE TRIGGER {p}sqla_sync_outbox_insert AFTER INSERT ON {p}sqla_sync_outbox "
            f"FOR EACH ROW IF NEW.status = 'pending' THEN {add('1')}; END IF",
            f"CREATE TRIGGER {p}sqla_sync_outbox_delete AFTER DELETE ON {p}sqla_sync_outbox "
            f"FOR EACH ROW IF OLD.status = 'pending' THEN {add('-1')}; END IF",
            f"CREATE TRIGGER {p}sqla_sync_outbox_status AFTER UPDATE ON {p}sqla_sync_outbox "
            "FOR EACH ROW IF NOT (OLD.status <=> NEW.status) THEN "
            f"{add(status_delta)}; END IF",
        ], [
            f"DROP TRIGGER IF EXISTS {p}sqla_sync_outbox_status",
            f"DROP TRIGGER IF EXISTS {p}sqla_sync_outbox_delete",
            f"DROP TRIGGER IF EXISTS {p}sqla_sync_outbox_insert",
        ]
    return [], []


def upgrade() -> None:
    op.create_table(
        "sqla_sync_outbox",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("row_key", sa.String(500), nullable=False),
        sa.Column("lane", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("changed", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("status", sa.String(10), nullable=False,
                  server_default=sa.text("'pending'")),
        sa.Column("claimed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sqla_sync_outbox"),
    )
    op.create_index(
        "ix_sqla_sync_outbox_table_name_row_key_lane",
        "sqla_sync_outbox",
        ["table_name", "row_key", "lane"],
        unique=True,
    )
    op.create_index("ix_sqla_sync_outbox_status_id", "sqla_sync_outbox", ["status", "id"])
    op.create_table(
        "sqla_sync_counters",
        sa.Column("slot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("slot", name="pk_sqla_sync_counters"),
    )
    create, _ = _counting(op.get_bind().dialect.name)
    for statement in create:
        op.execute(statement)
    op.create_table(
        "sqla_sync_checkpoints",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_sqla_sync_checkpoints"),
    )
    op.create_table(
        "sqla_sync_rows",
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("row_key", sa.String(500), nullable=False),
        sa.Column("server_key", sa.String(500), nullable=True),
        sa.Column("version", sa.String(255), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("table_name", "row_key", name="pk_sqla_sync_rows"),
    )
    op.create_index(
        "ix_sqla_sync_rows_table_name_server_key", "sqla_sync_rows", ["table_name", "server_key"]
    )
    op.create_table(
        "sqla_sync_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_sqla_sync_leases"),
    )


def downgrade() -> None:
    op.drop_table("sqla_sync_leases")
    op.drop_index("ix_sqla_sync_rows_table_name_server_key", table_name="sqla_sync_rows")
    op.drop_table("sqla_sync_rows")
    op.drop_table("sqla_sync_checkpoints")
    _, drop = _counting(op.get_bind().dialect.name)
    for statement in drop:
        op.execute(statement)
    op.drop_table("sqla_sync_counters")
    op.drop_index("ix_sqla_sync_outbox_status_id", table_name="sqla_sync_outbox")
    op.drop_index("ix_sqla_sync_outbox_table_name_row_key_lane", table_name="sqla_sync_outbox")
    op.drop_table("sqla_sync_outbox")
