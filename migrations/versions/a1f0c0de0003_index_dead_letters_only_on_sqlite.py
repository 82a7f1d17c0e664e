"""sqla_sync: on SQLite, index only the dead letters by (status, id)

Pending ops are read in the order of the outbox's rowid on SQLite, so the
``(status, id)`` index needs to hold only the dead letters; a commit of new
ops then writes no page of it (about one fewer page per commit to the
rollback journal and the file).  Other dialects: nothing to do (MySQL/MariaDB
have no partial index; PostgreSQL keeps reading pending ops through it).

Revision ID: a1f0c0de0003
Revises: a1f0c0de0002
Create Date: 2026-11-26 19:00:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1f0c0de0003"
down_revision: str | Sequence[str] | None = "a1f0c0de0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_sqla_sync_outbox_status_id"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # IF EXISTS: a run cut short after the DROP (which pysqlite commits on its
    # own) can be run again.
    op.drop_index(_NAME, table_name="sqla_sync_outbox", if_exists=True)
    op.create_index(_NAME, "sqla_sync_outbox", ["status", "id"],
                    sqlite_where=sa.text("status = 'dead'"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index(_NAME, table_name="sqla_sync_outbox", if_exists=True)
    op.create_index(_NAME, "sqla_sync_outbox", ["status", "id"])
