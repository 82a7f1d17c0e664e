"""sqla_sync: keep the queue depth in sqla_sync_counters on PostgreSQL too

Counting a million pending ops takes PostgreSQL far longer than 50 ms, so, as
on MySQL/MariaDB, triggers keep per-session counts that ``queue_depth`` sums.
Statement triggers count an INSERT's or DELETE's transition table once per
statement; a row trigger follows status changes (dead letters).  The counts
start from the ops already pending, under a lock that holds writers back
while the triggers are installed.  Other dialects: nothing to do.

Revision ID: a1f0c0de0002
Revises: a1f0c0de0001
Create Date: 2026-11-26 16:30:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1f0c0de0002"
down_revision: str | Sequence[str] | None = "a1f0c0de0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As ``sqla_sync.tables.counting_ddl("postgresql", schema)`` at this revision:
# every name qualified with the schema the outbox is in, because the trigger
# function runs under the writer's search_path.
_BODY = (
    "DECLARE delta bigint; BEGIN "
    "IF TG_OP = 'INSERT' THEN "
    "SELECT count(*) INTO delta FROM new_ops WHERE status = 'pending'; "
    "ELSIF TG_OP = 'DELETE' THEN "
    "SELECT -count(*) INTO delta FROM old_ops WHERE status = 'pending'; "
    "ELSE delta := (NEW.status = 'pending')::int - (OLD.status = 'pending')::int; "
    "END IF; "
    "IF delta <> 0 THEN "
    "INSERT INTO {s}.sqla_sync_counters AS c (slot, pending) VALUES (pg_backend_pid(), delta) "
    "ON CONFLICT (slot) DO UPDATE SET pending = c.pending + EXCLUDED.pending; "
    "END IF; RETURN NULL; END"
)

_CREATE = [
    "CREATE FUNCTION {s}.sqla_sync_count_pending() RETURNS trigger LANGUAGE plpgsql "
    f"AS $$ {_BODY} $$",
    "CREATE TRIGGER sqla_sync_outbox_insert AFTER INSERT ON {s}.sqla_sync_outbox "
    "REFERENCING NEW TABLE AS new_ops FOR EACH STATEMENT "
    "EXECUTE FUNCTION {s}.sqla_sync_count_pending()",
    "CREATE TRIGGER sqla_sync_outbox_delete AFTER DELETE ON {s}.sqla_sync_outbox "
    "REFERENCING OLD TABLE AS old_ops FOR EACH STATEMENT "
    "EXECUTE FUNCTION {s}.sqla_sync_count_pending()",
    "CREATE TRIGGER sqla_sync_outbox_status AFTER UPDATE ON {s}.sqla_sync_outbox FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION {s}.sqla_sync_count_pending()",
]

_DROP = [
    "DROP TRIGGER IF EXISTS sqla_sync_outbox_status ON {s}.sqla_sync_outbox",
    "DROP TRIGGER IF EXISTS sqla_sync_outbox_delete ON {s}.sqla_sync_outbox",
    "DROP TRIGGER IF EXISTS sqla_sync_outbox_insert ON {s}.sqla_sync_outbox",
    "DROP FUNCTION IF EXISTS {s}.sqla_sync_count_pending()",
]


def _schema() -> str:
    """The quoted schema of the outbox: the one a ``schema_translate_map`` on
    alembic's connection names (raw SQL does not follow the map), else the
    one unqualified names resolve to now."""
    bind = op.get_bind()
    name = bind.schema_for_object(sa.Table("sqla_sync_outbox", sa.MetaData()))
    if name is None:
        name = bind.exec_driver_sql("SELECT current_schema()").scalar_one()
    return str(bind.dialect.identifier_preparer.quote_schema(name))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _schema()
    # Writers wait until the triggers and the starting count are in place.
    op.execute(f"LOCK TABLE {schema}.sqla_sync_outbox IN SHARE ROW EXCLUSIVE MODE")
    for statement in _CREATE:
        op.execute(statement.replace("{s}", schema))
    op.execute(f"DELETE FROM {schema}.sqla_sync_counters")  # noqa: S608 - quoted name
    op.execute(
        f"INSERT INTO {schema}.sqla_sync_counters (slot, pending) "  # noqa: S608
        f"SELECT 0, count(*) FROM {schema}.sqla_sync_outbox WHERE status = 'pending'"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _schema()
    for statement in _DROP:
        op.execute(statement.replace("{s}", schema))
    op.execute(f"DELETE FROM {schema}.sqla_sync_counters")  # noqa: S608 - quoted name
