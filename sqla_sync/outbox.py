"""The read side of the outbox: pending ops in order, queue depth, oldest age.

Every query here is served by an index of ``sqla_sync_outbox`` (``(status,
id)`` for order, count and age; ``(table_name, row_key, lane)`` for the ops of
one row), so they stay cheap with a million pending ops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row

from .codec import loads
from .tables import STATUS_DEAD, STATUS_PENDING, outbox

__all__ = [
    "OutboxOp",
    "dead_letter_count",
    "oldest_pending_age",
    "ops_for_row",
    "pending_ops",
    "queue_depth",
]


@dataclasses.dataclass(frozen=True)
class OutboxOp:
    """One outbox row, as read: a pending (or dead-lettered) change of one synced row.

    :ivar changed: bit mask of changed columns (see ``ModelInfo.changed_keys``).
    :ivar state: the row as JSON stored at capture (deletes), else None: the
        row is read when it is pushed.
    """

    id: int
    table_name: str
    row_key: str
    op: str
    changed: int
    state: dict[str, Any] | None
    changed_at: float
    created_at: float
    lane: int
    idempotency_key: str | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    status: str
    claimed_at: float | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> OutboxOp:
        """Build an op from a row of ``select(outbox)``."""
        m = row._mapping
        state = m["state"]
        return cls(
            id=m["id"],
            table_name=m["table_name"],
            row_key=m["row_key"],
            op=m["op"],
            changed=m["changed"],
            state=loads(state) if state is not None else None,
            changed_at=m["changed_at"],
            created_at=m["created_at"],
            lane=m["lane"],
            idempotency_key=m["idempotency_key"],
            attempts=m["attempts"],
            next_attempt_at=m["next_attempt_at"],
            last_error=m["last_error"],
            status=m["status"],
            claimed_at=m["claimed_at"],
        )


def pending_ops(
    conn: Connection, *, limit: int | None = None, after_id: int = 0
) -> list[OutboxOp]:
    """Pending ops in capture order (FIFO), dead letters excluded.

    :param limit: at most this many ops.
    :param after_id: only ops with a larger id, for reading in pages.
    """
    stmt = (
        select(outbox)
        .where(outbox.c.status == STATUS_PENDING, outbox.c.id > after_id)
        .order_by(outbox.c.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [OutboxOp.from_row(row) for row in conn.execute(stmt)]


def ops_for_row(conn: Connection, table_name: str, row_key: str) -> Sequence[OutboxOp]:
    """Every op (pending or dead) of one row, oldest first."""
    stmt = (
        select(outbox)
        .where(outbox.c.table_name == table_name, outbox.c.row_key == row_key)
        .order_by(outbox.c.id)
    )
    return [OutboxOp.from_row(row) for row in conn.execute(stmt)]


def queue_depth(conn: Connection) -> int:
    """How many ops wait to be pushed (claimed ones included, dead letters not)."""
    stmt = select(func.count()).select_from(outbox).where(outbox.c.status == STATUS_PENDING)
    return int(conn.execute(stmt).scalar_one())


def dead_letter_count(conn: Connection) -> int:
    """How many ops were given up on and wait for ``retry_dead_letter``."""
    stmt = select(func.count()).select_from(outbox).where(outbox.c.status == STATUS_DEAD)
    return int(conn.execute(stmt).scalar_one())


def oldest_pending_age(conn: Connection, now: float) -> float | None:
    """Seconds since the oldest pending op was captured, or None with an empty queue."""
    stmt = (
        select(outbox.c.created_at)
        .where(outbox.c.status == STATUS_PENDING)
        .order_by(outbox.c.id)
        .limit(1)
    )
    created = conn.execute(stmt).scalar_one_or_none()
    return None if created is None else max(0.0, now - created)
