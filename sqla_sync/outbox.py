"""The read side of the outbox: pending ops in order, queue depth, oldest age.

Every query here is served by an index of ``sqla_sync_outbox`` (``(status,
id)`` for order and age, which on SQLite holds dead letters only, pending ops
being read in the order of the table's rowid; ``(table_name, row_key, lane)``
for the ops of one row) or by the trigger-kept ``sqla_sync_counters`` (queue
depth on PostgreSQL and MySQL/MariaDB), so they stay cheap with a million
pending ops.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, bindparam, delete, func, literal_column, select, update
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Row

from .codec import dumps, loads
from .tables import OP_INSERT, STATUS_DEAD, STATUS_PENDING, counters, outbox

#: Dead letters: the condition of SQLite's partial ``(status, id)`` index,
#: word for word, so that its plan never depends on a bound value.
_DEAD = outbox.c.status == literal_column(f"'{STATUS_DEAD}'")

__all__ = [
    "DeadLetter",
    "OutboxOp",
    "bury",
    "claim",
    "complete",
    "current",
    "dead_letter_count",
    "dead_letters",
    "dead_rows",
    "error_record",
    "fold_counters",
    "oldest_pending_age",
    "ops_for_row",
    "pending_inserts",
    "pending_masks",
    "pending_ops",
    "queue_depth",
    "release",
    "reschedule",
    "revive",
]


@dataclasses.dataclass(frozen=True)
class OutboxOp:
    """One outbox row, as read: a pending (or dead-lettered) change of one synced row.

    :ivar changed: bit mask of changed columns (see ``ModelInfo.changed_keys``).
    :ivar state: deletes: the row as JSON stored at capture; inserts and
        updates: None until first claimed (the row is read when it is pushed),
        then the row as first sent (see :func:`claim`).
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


def pending_inserts(conn: Connection, rows: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``rows`` ((table, row key) pairs) have a pending insert, wherever
    it stands in the queue: push holds their children back until it is sent."""
    by_table: dict[str, list[str]] = {}
    for table_name, key in rows:
        by_table.setdefault(table_name, []).append(key)
    found: set[tuple[str, str]] = set()
    for table_name, keys in by_table.items():
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), 500):
            stmt = select(outbox.c.row_key).where(
                outbox.c.table_name == table_name,
                outbox.c.row_key.in_(wanted[start : start + 500]),
                outbox.c.op == OP_INSERT,
                outbox.c.status == STATUS_PENDING,
            )
            found.update((table_name, key) for (key,) in conn.execute(stmt))
    return found


def ops_for_row(conn: Connection, table_name: str, row_key: str) -> Sequence[OutboxOp]:
    """Every op (pending or dead) of one row, oldest first."""
    stmt = (
        select(outbox)
        .where(outbox.c.table_name == table_name, outbox.c.row_key == row_key)
        .order_by(outbox.c.id)
    )
    return [OutboxOp.from_row(row) for row in conn.execute(stmt)]


def current(conn: Connection, ids: Iterable[int]) -> dict[int, OutboxOp]:
    """The ops ``ids`` as they are now, by id (those removed meanwhile are missing).

    Locked until the transaction ends where the database has row locks (SQLite
    needs none inside the library's ``BEGIN IMMEDIATE``): a change captured
    meanwhile has folded into them already, or waits until they are claimed.
    """
    wanted = list(ids)
    found: dict[int, OutboxOp] = {}
    for start in range(0, len(wanted), 500):
        stmt = select(outbox).where(outbox.c.id.in_(wanted[start : start + 500]))
        if conn.dialect.name != "sqlite":
            stmt = stmt.with_for_update()
        found.update((op.id, op) for op in map(OutboxOp.from_row, conn.execute(stmt)))
    return found


def queue_depth(conn: Connection) -> int:
    """How many ops wait to be pushed (claimed ones included, dead letters not).

    Exact.  On PostgreSQL and MySQL/MariaDB the sum of the trigger-kept
    ``sqla_sync_counters`` rows (one per database session that changed the
    outbox since the last :func:`fold_counters`); on SQLite every op minus
    the dead letters (the only ops not pending), because SQLite counts a
    whole table without reading its rows, and the dead letters are few.
    """
    if conn.dialect.name == "sqlite":
        total = select(func.count()).select_from(outbox).scalar_subquery()
        dead = select(func.count()).select_from(outbox).where(_DEAD).scalar_subquery()
        stmt = select(total - dead)
    else:
        stmt = select(func.coalesce(func.sum(counters.c.pending), 0))
    return int(conn.execute(stmt).scalar_one())


def fold_counters(conn: Connection) -> int:
    """Fold the ``sqla_sync_counters`` rows of other database sessions into
    one row (slot 0), so that :func:`queue_depth` keeps summing a handful of
    rows however many connections an application opens over its life.

    Rows that a transaction in flight holds are skipped (``FOR UPDATE SKIP
    LOCKED``): folding never waits for, nor blocks, a writer.  A no-op on
    SQLite (no counters) and on servers without SKIP LOCKED (MySQL before 8,
    MariaDB before 10.6).  Call it in a transaction of its own, under READ
    COMMITTED on MySQL/MariaDB: under REPEATABLE READ its locking read also
    takes gap locks, and a connection writing its first op waits until the
    fold commits.  The sync engine does so after each push.

    :return: how many rows were folded.
    """
    dialect = conn.dialect
    version = dialect.server_version_info or ()
    if dialect.name == "sqlite" or (
        dialect.name in ("mysql", "mariadb")
        and version < ((10, 6) if getattr(dialect, "is_mariadb", False) else (8,))
    ):
        return 0
    rows = conn.execute(
        select(counters.c.slot, counters.c.pending)
        .where(counters.c.slot != 0)
        .order_by(counters.c.slot)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    conn.execute(delete(counters).where(counters.c.slot.in_([slot for slot, _ in rows])))
    total = sum(pending for _, pending in rows)
    if dialect.name == "postgresql":
        ins: Any = postgresql.insert(counters).values(slot=0, pending=total)
        ins = ins.on_conflict_do_update(
            index_elements=[counters.c.slot],
            set_={"pending": counters.c.pending + ins.excluded.pending})
    else:
        ins = mysql.insert(counters).values(slot=0, pending=total)
        ins = ins.on_duplicate_key_update(pending=counters.c.pending + ins.inserted.pending)
    conn.execute(ins)
    return len(rows)


def dead_letter_count(conn: Connection) -> int:
    """How many ops were given up on and wait for ``retry_dead_letter``."""
    stmt = select(func.count()).select_from(outbox).where(_DEAD)
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


# -- the write side: claim, complete, retry, dead-letter ----------------------


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An op given up on; ``retry_dead_letter(id)`` puts it back in the queue.

    Holds no header and no secret: the error text is redacted before it is stored.
    """

    id: int
    table_name: str
    row_key: str
    op: str
    error: str
    status: int | None
    method: str | None
    url: str | None
    attempts: int
    changed_at: float


def error_record(
    error: str, *, status: int | None = None, method: str | None = None, url: str | None = None
) -> str:
    """The ``last_error`` text of an op: a small JSON object (already redacted)."""
    return dumps({"error": error, "status": status, "method": method, "url": url})


def _error_fields(text: str | None) -> dict[str, Any]:
    if not text:
        return {"error": "", "status": None, "method": None, "url": None}
    try:
        data = loads(text)
    except ValueError:
        return {"error": text, "status": None, "method": None, "url": None}
    return data if isinstance(data, dict) else {"error": text}


def claim(conn: Connection, ops: Sequence[OutboxOp], now: float,
          states: Mapping[int, Any] | None = None) -> dict[int, str]:
    """Mark ``ops`` in flight: each moves to its own lane (so no later change
    folds into it) and gets its Idempotency-Key, kept for every attempt.

    :param states: op id -> the row as it is about to be sent (JSON-ready), for
        inserts and updates.  Only the first one is kept: it is what a server
        that honours the Idempotency-Key applied if an answer was lost, so a
        later pull can tell the echo of that attempt from another client's
        change.  A delete keeps the state stored at capture.
    :return: op id -> idempotency key.
    """
    keys = {op.id: op.idempotency_key or uuid.uuid4().hex for op in ops}
    states = states or {}
    conn.execute(
        update(outbox)
        .where(outbox.c.id == bindparam("op_id"))
        .values(lane=bindparam("op_id"), claimed_at=now, idempotency_key=bindparam("key"),
                state=func.coalesce(outbox.c.state, bindparam("sent", type_=outbox.c.state.type))),
        [{"op_id": op_id, "key": key,
          "sent": None if states.get(op_id) is None else dumps(states[op_id])}
         for op_id, key in keys.items()],
    )
    return keys


def complete(conn: Connection, ids: Iterable[int]) -> None:
    """Remove ops the server has applied (or that became pointless)."""
    ids = list(ids)
    if not ids:
        return
    if conn.dialect.name == "postgresql":
        # One statement: the outbox's statement trigger then runs once.
        conn.execute(delete(outbox).where(outbox.c.id == func.any(
            bindparam("ids", ids, type_=postgresql.ARRAY(BigInteger)))))
    else:
        conn.execute(delete(outbox).where(outbox.c.id == bindparam("op_id")),
                     [{"op_id": i} for i in ids])


def reschedule(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record failed attempts: dicts with op_id, attempts, next_attempt_at, last_error."""
    if rows:
        conn.execute(
            update(outbox)
            .where(outbox.c.id == bindparam("op_id"))
            .values(attempts=bindparam("attempts"), next_attempt_at=bindparam("next_at"),
                    last_error=bindparam("error"), claimed_at=None),
            [{"op_id": r["op_id"], "attempts": r["attempts"], "next_at": r["next_attempt_at"],
              "error": r["last_error"]} for r in rows],
        )


def bury(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Make ops dead letters: dicts with op_id, attempts, last_error."""
    if rows:
        conn.execute(
            update(outbox)
            .where(outbox.c.id == bindparam("op_id"))
            .values(status=STATUS_DEAD, attempts=bindparam("attempts"),
                    last_error=bindparam("error"), claimed_at=None),
            [{"op_id": r["op_id"], "attempts": r["attempts"], "error": r["last_error"]}
             for r in rows],
        )


def release(conn: Connection, ids: Iterable[int]) -> None:
    """Give claimed ops back untried (push paused); they keep their lane and key."""
    params = [{"op_id": i} for i in ids]
    if params:
        conn.execute(
            update(outbox).where(outbox.c.id == bindparam("op_id")).values(claimed_at=None),
            params,
        )


def dead_rows(conn: Connection) -> set[tuple[str, str]]:
    """(table, row key) of every row with a dead letter: their later ops wait."""
    stmt = select(outbox.c.table_name, outbox.c.row_key).where(_DEAD)
    return {(t, k) for t, k in conn.execute(stmt)}


def dead_letters(conn: Connection) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    stmt = select(outbox).where(_DEAD).order_by(outbox.c.id)
    result = []
    for row in conn.execute(stmt).mappings():
        fields = _error_fields(row["last_error"])
        result.append(DeadLetter(
            id=row["id"], table_name=row["table_name"], row_key=row["row_key"], op=row["op"],
            error=str(fields.get("error") or ""), status=fields.get("status"),
            method=fields.get("method"), url=fields.get("url"), attempts=row["attempts"],
            changed_at=row["changed_at"],
        ))
    return result


def revive(conn: Connection, op_id: int) -> bool:
    """Put a dead letter back in the queue with fresh retries; False if there is none."""
    result = conn.execute(
        update(outbox)
        .where(outbox.c.id == op_id, outbox.c.status == STATUS_DEAD)
        .values(status=STATUS_PENDING, attempts=0, next_attempt_at=0.0, claimed_at=None)
    )
    return bool(result.rowcount)


def pending_masks(
    conn: Connection, table_name: str, keys: Iterable[str], exclude: Iterable[int]
) -> dict[str, int]:
    """Union of the change masks of pending ops per row key, ``exclude`` ids left out.

    Push uses it so that writing the server's answer back never overwrites a
    column changed locally while the request was in flight.
    """
    wanted = list(dict.fromkeys(keys))
    skip = set(exclude)
    masks: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        stmt = select(outbox.c.id, outbox.c.row_key, outbox.c.changed, outbox.c.op).where(
            outbox.c.table_name == table_name,
            outbox.c.row_key.in_(wanted[start : start + 500]),
            outbox.c.status == STATUS_PENDING,
        )
        for op_id, key, changed, op in conn.execute(stmt):
            if op_id in skip:
                continue
            masks[key] = masks.get(key, 0) | (-1 if op != "update" else changed)
    return masks
