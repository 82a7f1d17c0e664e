"""Pull: the server's changes, page by page, into the local database.

Each page is applied in one transaction together with its checkpoint, so a
crash re-fetches at most the page it was on, and applying a page again is
harmless.  Writes here go through Core on the engine's connection, never
through a tracked session, so nothing pull writes is captured.

The library-kept :class:`~sqla_sync.Cursor` remembers the last applied row as
``(value, key)`` plus the keys already applied at that value ("ties").  Every
request asks for rows from that value on -- on a strict (``>``) server one
unit below it -- and drops rows already applied, so rows sharing a timestamp
across a page boundary are never skipped.  When more rows share one value
than a page holds, the same bound is paged through with the route's
paginator, backing up when rows leave the group while it is paged.  Rows that
change on the server meanwhile get a newer value and arrive later in the same
listing or the next one.

A pulled row whose key has a pending local op is a conflict only when it
differs from the last known server state (the shadow); otherwise it is the
echo of our own push or a re-listed row, and the local edit stays.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.engine import Connection

from . import checkpoints as cp
from . import outbox as ob
from . import shadow
from .capture import write_ops
from .conflicts import Conflict, Conflicts, decide
from .errors import SyncError, TransportError
from .mixin import ModelInfo
from .routes import (
    BodyCursor,
    Cursor,
    NextLink,
    Offset,
    PageNumber,
    Position,
    Pull,
    RouteTable,
    TableRoutes,
)
from .tables import OP_DELETE, OP_INSERT, OP_UPDATE, STATUS_PENDING, outbox
from .transport import Answer, Transport

__all__ = ["Applier", "PullContext", "PullError", "PullResult", "Puller", "TablePull"]

log = logging.getLogger(__name__)

Emit = Callable[..., None]
Fence = Callable[[Connection], None]


class PullError(SyncError):
    """A pull could not list or apply a page; what was applied before stays."""


@dataclasses.dataclass(frozen=True)
class TablePull:
    """What one pull did to one table."""

    pulled: int = 0
    deleted: int = 0
    conflicts: int = 0
    pages: int = 0
    complete: bool = True


@dataclasses.dataclass(frozen=True)
class PullResult:
    """The outcome of one pull: rows written, rows deleted, conflicts, pages."""

    pulled: int = 0
    deleted: int = 0
    conflicts: int = 0
    pages: int = 0
    duration: float = 0.0
    tables: Mapping[str, TablePull] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PageResponse:
    """Status and headers of the page just fetched (``ctx.response``)."""

    status: int
    headers: Mapping[str, str]


class PullContext:
    """What ``query`` and ``on_complete`` callables of a pull route are given.

    :ivar checkpoint: the library-kept cursor state of the table, if any.
    :ivar response: status and headers of the page (in ``on_complete``).
    """

    def __init__(self, table: str, conn: Connection | None, db: Engine, now: float,
                 checkpoint: Any, page: int) -> None:
        self.table = table
        self._conn = conn
        self._db = db
        self._now = now
        self.checkpoint = checkpoint
        self.page = page
        self.response: PageResponse | None = None

    def get_checkpoint(self, name: str) -> Any:
        """The value stored under ``name`` (``"pull:posts"``), or None."""
        if self._conn is not None:
            return cp.get_checkpoint(self._conn, name)
        with self._db.connect() as conn:
            return cp.get_checkpoint(conn, name)

    def set_checkpoint(self, name: str, value: Any) -> None:
        """Store ``value`` under ``name``, in the transaction of the page's rows."""
        if self._conn is None:
            raise SyncError("set_checkpoint() is available in on_complete, after a page is applied")
        cp.set_checkpoint(self._conn, name, value, self._now)


# -- timestamps ------------------------------------------------------------------


def _order_value(value: Any) -> float | str:
    """A comparable form of a cursor value: epoch seconds, or the text itself."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond floats: it still orders
            return float("inf") if value > 0 else float("-inf")
    text = str(value)
    try:
        moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.timestamp()
    except (ValueError, OverflowError):  # not a timestamp, or out of datetime's range
        return text


def _one_unit_below(value: Any) -> Any:
    """The largest value below ``value`` at its own precision: what a strict
    (``>``) filter needs to also return rows *at* ``value``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value - 1
    if isinstance(value, float):
        return round(value - 0.001, 6)
    text = str(value)
    zulu = text.endswith("Z")
    try:
        moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if zulu else text)
    except ValueError:
        return value  # opaque: the server is asked with the value itself
    _, _, frac = text.partition(".")
    digits = len(frac.rstrip("Z").split("+")[0].split("-")[0]) if frac else 0
    if digits >= 6:
        step, spec = dt.timedelta(microseconds=1), "microseconds"
    elif digits >= 1:
        step, spec = dt.timedelta(milliseconds=1), "milliseconds"
    else:
        step, spec = dt.timedelta(seconds=1), "seconds"
    try:
        out = (moment - step).isoformat(timespec=spec)
    except OverflowError:  # year 1: nothing is below it; ask with the value itself
        return value
    if zulu:
        out = out.replace("+00:00", "Z")
    return out


# -- applying rows ------------------------------------------------------------------


def _norm_version(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')


#: How a column is read from a server row: (column key, server field, the other
#: field name that also reaches the column or None, JSON types kept as they
#: are (None: every value), decoder).
_ColumnRead = tuple[str, str, "str | None", "frozenset[type] | None", Callable[[Any], Any]]


def _read_plan(table: TableRoutes) -> tuple[_ColumnRead, ...]:
    """The fields of a server row that reach each column, once per table.

    :meth:`TableRoutes.columns_of` renames every field with ``to_local`` (a
    field it does not know keeps its name) and decodes the synced columns, so
    a column is reached by its server name and, unless that name is another
    column's server name, by its own key too.
    """
    info = table.info
    names: dict[str, list[str]] = {}
    for field, key in table.to_local.items():
        names.setdefault(key, []).append(field)
    plan: list[_ColumnRead] = []
    for key in info.keys:
        fields = names.get(key, [])
        if key not in table.to_local and key not in fields:
            fields.append(key)
        if not fields:
            continue
        codec = info.codecs[key]
        alias = fields[1] if len(fields) > 1 else None
        plan.append((key, fields[0], alias, codec.as_is, codec.decode))
    return tuple(plan)


@dataclasses.dataclass
class _Writes:
    """Row writes of one page, grouped by the columns they set."""

    inserts: dict[tuple[str, ...], list[dict[str, Any]]] = dataclasses.field(
        default_factory=dict)
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = dataclasses.field(
        default_factory=dict)


class Applier:
    """Writes server rows of one table into the local database, with conflicts."""

    def __init__(self, table: TableRoutes, conflicts: Conflicts, clock: Callable[[], float],
                 time_field: str | None) -> None:
        self.table = table
        self.info: ModelInfo = table.info
        self.conflicts = conflicts
        self.clock = clock
        self.time_field = time_field
        pull = table.routes.pull
        self.deleted_fn = pull.deleted if pull is not None else None
        self.map_row = pull.map_row if pull is not None else None
        self._plan = _read_plan(table)
        self._any_pending_stmt = select(outbox.c.id).where(
            outbox.c.table_name == table.name, outbox.c.status == STATUS_PENDING).limit(1)
        pk_cols = [self.info.columns[k] for k in self.info.pk_keys]
        pk_expr = pk_cols[0] if len(pk_cols) == 1 else tuple_(*pk_cols)
        self._local_stmt = select(*(self.info.columns[k] for k in self.info.keys)).where(
            pk_expr.in_(bindparam("keys", expanding=True)))
        #: Of a single-column key: the text and integer types its codec keeps as they are.
        self._key_as_is: frozenset[type] = frozenset()
        self._single_pk = self.info.pk_keys[0] if len(pk_cols) == 1 else None
        self._version_field = table.routes.version_field
        if len(pk_cols) == 1:
            as_is = self.info.pk_codecs[0].as_is
            self._key_as_is = frozenset({str, int} if as_is is None else as_is & {str, int})
        self._names = {k: c.name for k, c in self.info.columns.items()}
        #: Column names are the attribute keys: a row's values are its insert parameters.
        self._plain_names = all(k == n for k, n in self._names.items())

    # -- decoding -----------------------------------------------------------------

    def columns(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Column values of a server row: renamed, ``map_row`` applied, decoded.

        The same as :meth:`TableRoutes.columns_of` (plus ``map_row``), read
        through a plan made once per table instead of renaming every field.
        """
        values: dict[str, Any] = {}
        for key, field, alias, as_is, decode in self._plan:
            if field in row:
                if alias is not None and alias in row:
                    # Both names of the column: the later field wins, as columns_of has it.
                    values = self.table.columns_of(row)
                    break
                value = row[field]
            elif alias is not None and alias in row:
                value = row[alias]
            else:
                continue
            if value is None or as_is is None or type(value) in as_is:
                values[key] = value
            else:
                values[key] = decode(value)
        if self.map_row is not None:
            values.update(self.info.decode_row(self.map_row(dict(row))))
        return values

    def key_of(self, values: Mapping[str, Any]) -> str:
        missing = [k for k in self.info.pk_keys if values.get(k) is None]
        if missing:
            raise PullError(
                f"{self.table.name}: a server row has no {', '.join(missing)} "
                "(its primary key); check map_response/map_row and fields="
            )
        return self.info.encode_key(values[k] for k in self.info.pk_keys)

    def _key_and_pk(self, values: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The key text of a row's column values, and its primary key values."""
        if self._single_pk is not None:
            only: Any = values.get(self._single_pk)
            kind = type(only)
            if kind in self._key_as_is:  # _key_text(), inline
                return ("[" + encode_basestring(only) + "]" if kind is str
                        else f"[{only}]"), (only,)
        pk = tuple([values.get(k) for k in self.info.pk_keys])
        if None in pk:
            self.key_of(values)  # raises, naming what is missing
        return self._key_text(pk), pk

    def _key_text(self, pk: tuple[Any, ...]) -> str:
        """:meth:`ModelInfo.encode_key`, written directly for a text or integer
        key its codec keeps as it is (the same text)."""
        if len(pk) == 1:
            only = pk[0]
            kind = type(only)
            if kind in self._key_as_is:
                return "[" + encode_basestring(only) + "]" if kind is str else f"[{only}]"
        return self.info.encode_key(pk)

    def is_tombstone(self, row: Mapping[str, Any]) -> bool:
        return bool(self.deleted_fn(dict(row))) if self.deleted_fn is not None else False

    def same_as_shadow(self, row: Mapping[str, Any], known: shadow.ShadowRow | None) -> bool:
        """Whether a pulled row is what the library last knew of the server."""
        if known is None or known.state is None:
            return False
        vf = self.table.routes.version_field
        if vf and vf in row and known.version is not None:
            return _norm_version(row[vf]) == _norm_version(known.version)
        mine = self.columns(row)
        theirs = self.columns(known.state)
        return all(theirs.get(k) == v for k, v in mine.items())

    def remote_time(self, row: Mapping[str, Any] | None) -> float | None:
        """The server's time of a row (or tombstone, or deletions-feed entry) in
        epoch seconds, for lww; None when it has none."""
        if row is None or self.time_field is None or self.time_field not in row:
            return None
        value = _order_value(row[self.time_field])
        if not isinstance(value, float):
            return None
        # Epoch milliseconds: 1e11 seconds is in the year 5138.
        return value / 1000.0 if value > 1e11 else value

    def _server_managed(self) -> frozenset[str]:
        """Columns the server sets itself (version, change time): left out when
        a pulled row is compared with what was sent."""
        names = {self.table.routes.version_field, self.time_field} - {None}
        return frozenset(k for k in self.info.keys if self.table.server_field(k) in names)

    def echo_of(self, values: Mapping[str, Any], local: Mapping[str, Any] | None,
                ops: Sequence[ob.OutboxOp]) -> int | None:
        """Whether a pulled row that differs from the shadow is still no conflict.

        :return: the index of the last pending op whose first attempt the row
            shows (an attempt whose answer was lost: the row is its echo, and
            that op and the ones before it are done); -1 when the row already
            holds the local values (nothing to decide); None for a conflict.
        """
        skip = self._server_managed()

        def same(state: Mapping[str, Any]) -> bool:
            return all(state[k] == v for k, v in values.items() if k not in skip and k in state)

        for index in range(len(ops) - 1, -1, -1):
            op = ops[index]
            if op.op != OP_DELETE and op.idempotency_key is not None and op.state is not None:
                if same(self.info.decode_row(op.state)):
                    return index
        if local is not None and ops[-1].op != OP_DELETE and same(local):
            return -1
        return None

    # -- reading local state ----------------------------------------------------------

    def local_rows(self, conn: Connection, keys: Sequence[str],
                   pks: Mapping[str, tuple[Any, ...]] | None = None, *,
                   lock: bool = False) -> dict[str, dict[str, Any]]:
        """The local rows of ``keys``, by key.

        :param pks: the primary key values of (some of) the keys, when the
            caller has them; the others are decoded from the key text.
        :param lock: read them ``FOR UPDATE``.
        """
        info = self.info
        single = len(info.pk_keys) == 1
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            decoded = [pks[k] if pks is not None and k in pks else info.decode_key(k)
                       for k in chunk]
            wanted = [d[0] for d in decoded] if single else decoded
            stmt = self._local_stmt if not lock else self._local_stmt.with_for_update()
            for row in conn.execute(stmt, {"keys": wanted}):
                values = dict(zip(info.keys, row))
                found[self._key_text(tuple([values[k] for k in info.pk_keys]))] = values
        return found

    def _any_pending(self, conn: Connection) -> bool:
        """Whether the table has any pending op at all."""
        return conn.execute(self._any_pending_stmt).first() is not None

    def pending(self, conn: Connection, keys: Sequence[str], *,
                lock: bool = False) -> dict[str, list[ob.OutboxOp]]:
        """Pending ops of ``keys`` in order, by key (``lock``: read ``FOR UPDATE``)."""
        found: dict[str, list[ob.OutboxOp]] = {}
        for start in range(0, len(keys), 500):
            stmt = select(outbox).where(
                outbox.c.table_name == self.table.name,
                outbox.c.row_key.in_(keys[start : start + 500]),
                outbox.c.status == STATUS_PENDING,
            ).order_by(outbox.c.id)
            for row in conn.execute(stmt.with_for_update() if lock else stmt):
                op = ob.OutboxOp.from_row(row)
                found.setdefault(op.row_key, []).append(op)
        return found

    # -- writing --------------------------------------------------------------------

    def _pk_where(self, key: str) -> Any:
        info = self.info
        return and_(*(info.columns[k] == v for k, v in zip(info.pk_keys, info.decode_key(key))))

    def _write_row(self, conn: Connection, key: str, values: Mapping[str, Any],
                   local: Mapping[str, Any] | None) -> bool:
        info = self.info
        if local is None:
            conn.execute(insert(info.table).values(
                {info.columns[k].name: v for k, v in values.items()}))
            return True
        changes = {k: v for k, v in values.items()
                   if k not in info.pk_keys and local.get(k) != v}
        if changes:
            conn.execute(update(info.table).where(self._pk_where(key)).values(
                {info.columns[k].name: v for k, v in changes.items()}))
        return bool(changes)

    def _queue_row(self, batch: _Writes, key: str, values: dict[str, Any],
                   local: Mapping[str, Any] | None) -> bool:
        """Like :meth:`_write_row`, but collected and written per page in a few
        executemany statements (one per set of written columns)."""
        info = self.info
        if local is None:
            names = self._names
            batch.inserts.setdefault(tuple(values), []).append(
                values if self._plain_names else {names[k]: v for k, v in values.items()})
            return True
        changes = {k: v for k, v in values.items()
                   if k not in info.pk_keys and local.get(k) != v}
        if changes:
            params = {f"_set_{k}": v for k, v in changes.items()}
            params.update({f"_pk_{k}": local[k] for k in info.pk_keys})
            batch.updates.setdefault(tuple(sorted(changes)), []).append(params)
        return bool(changes)

    def _flush(self, conn: Connection, batch: _Writes) -> None:
        info = self.info
        for rows in batch.inserts.values():
            conn.execute(insert(info.table), rows)
        for names, params in batch.updates.items():
            stmt = (
                update(info.table)
                .where(and_(*(info.columns[k] == bindparam(f"_pk_{k}") for k in info.pk_keys)))
                .values({info.columns[k].name: bindparam(f"_set_{k}") for k in names})
            )
            conn.execute(stmt, params)

    def _delete_row(self, conn: Connection, key: str) -> bool:
        return bool(conn.execute(delete(self.info.table).where(self._pk_where(key))).rowcount)

    def _drop_ops(self, conn: Connection, key: str) -> None:
        conn.execute(delete(outbox).where(
            outbox.c.table_name == self.table.name, outbox.c.row_key == key,
            outbox.c.status == STATUS_PENDING))

    def _read_page(self, rows: Sequence[Mapping[str, Any]],
                   dead: dict[str, Mapping[str, Any]] | None = None) -> tuple[
            dict[str, tuple[dict[str, Any], Mapping[str, Any] | None]],
            dict[str, tuple[Any, ...]]]:
        """Column values of the listed rows by key (the last listing of a key wins,
        at the place of its first), with the row itself or None for a tombstone;
        and the primary key values of each key.  ``dead`` collects the
        tombstones by key (lww reads the time of a delete from them)."""
        last: dict[str, tuple[dict[str, Any], Mapping[str, Any] | None]] = {}
        pks: dict[str, tuple[Any, ...]] = {}
        columns = self.columns
        key_and_pk = self._key_and_pk
        deleted = self.deleted_fn
        for item in rows:
            if type(item) is not dict and not isinstance(item, Mapping):
                raise PullError(f"{self.table.name}: a server row is {type(item).__name__}, "
                                "not an object; check map_response")
            try:
                values = columns(item)
            except (TypeError, ValueError, KeyError) as exc:
                raise PullError(f"{self.table.name}: a server row could not be read: "
                                f"{type(exc).__name__}: {exc}") from None
            key, pk = key_and_pk(values)
            pks[key] = pk
            # is_tombstone(), inline: a call per row counts here.
            if deleted is not None and deleted(dict(item)):
                last[key] = (values, None)
                if dead is not None:
                    dead[key] = item
            else:
                last[key] = (values, item)
        return last, pks

    def apply(
        self,
        conn: Connection,
        rows: Sequence[Mapping[str, Any]],
        *,
        deleted_keys: Iterable[str] = (),
        deleted_rows: Mapping[str, Mapping[str, Any]] | None = None,
        now: float,
    ) -> tuple[int, int, list[Conflict]]:
        """Apply server rows (and keys deleted on the server) on ``conn``.

        :param deleted_rows: deletions-feed entries by key, for the time of a
            delete (lww weighs it against the local change).
        :return: (rows written, rows deleted, conflicts).
        """
        dead: dict[str, Mapping[str, Any]] = dict(deleted_rows or {})
        last, pks = self._read_page(rows, dead)
        for key in deleted_keys:
            last[key] = ({}, None)
        if not last:
            return 0, 0, []
        keys = list(last)
        # Where the database has row locks, the rows and then their ops are
        # read FOR UPDATE (the order an application flush locks them in): an
        # application commit is then either seen by the decisions below or
        # waits for this page's commit, never lands in between.  SQLite needs
        # none: the page's transaction holds its write lock from the start.
        lock = conn.dialect.name != "sqlite"
        locals_ = self.local_rows(conn, keys, pks, lock=lock)
        if lock:
            pending = self.pending(conn, keys, lock=True)
        else:
            # Most pages meet no pending op: one cheap look saves reading
            # ops and shadows.
            pending = self.pending(conn, keys) if self._any_pending(conn) else {}
        # Only a key with a pending op compares with its shadow (echo or conflict).
        shadows = (shadow.get_many(conn, self.table.name, [k for k in keys if k in pending])
                   if pending else {})
        written = deleted = 0
        conflicts: list[Conflict] = []
        new_shadows: list[shadow.ShadowTuple] = []
        gone: list[str] = []
        batch = _Writes()
        for key, (values, row) in last.items():
            local = locals_.get(key)
            ops = pending.get(key)
            known = shadows.get(key)
            if ops:
                if row is not None and self.same_as_shadow(row, known):
                    continue  # our own echo, or a re-listed row: the local edit stays
                if row is None:
                    if ops[-1].op == OP_DELETE:
                        self._drop_ops(conn, key)  # deleted on both sides
                        gone.append(key)
                        continue
                    if known is not None and known.state is None:
                        continue  # a delete already settled for the local side
                else:
                    echo = self.echo_of(values, local, ops)
                    if echo is not None:
                        # The echo of a push whose answer was lost (those ops
                        # are done), or the local values already: no conflict.
                        done = ops[:echo + 1]
                        if done:
                            conn.execute(delete(outbox).where(
                                outbox.c.id.in_([o.id for o in done])))
                        elif any(o.op == OP_INSERT for o in ops):
                            # A local create of a row the server has already.
                            self._rebase(conn, key, ops, remote_exists=True)
                        mask = 0
                        for later in ops[echo + 1:]:
                            mask |= later.changed if later.op == OP_UPDATE else -1
                        if local is not None:
                            written += self._queue_row(batch, key, {
                                k: v for k, v in values.items()
                                if k in self.info.pk_keys or not mask & self.info.bits[k]},
                                local)
                        new_shadows.append(self._shadow_row(key, row, now))
                        continue
                conflict, outcome = self._resolve(conn, key, values, row, local, ops, known, now,
                                                  when=dead.get(key))
                conflicts.append(conflict)
                if outcome == "remote":
                    if row is None:
                        deleted += self._delete_row(conn, key)
                    else:
                        written += self._write_row(conn, key, values, local)
                if row is not None:
                    new_shadows.append(self._shadow_row(key, row, now))
                elif outcome == "remote":
                    gone.append(key)
                else:
                    # The server deleted the row and the local side was kept:
                    # remember the delete, not the row it deleted.
                    new_shadows.append(self.deleted_shadow(key, now))
                continue
            if row is None:
                if local is not None:
                    deleted += self._delete_row(conn, key)
                gone.append(key)
                continue
            written += self._queue_row(batch, key, values, local)
            new_shadows.append(self._shadow_row(key, row, now))
        self._flush(conn, batch)
        shadow.write_many(conn, new_shadows)
        shadow.delete_many(conn, self.table.name, gone)
        return written, deleted, conflicts

    def deleted_shadow(self, key: str, now: float) -> shadow.ShadowTuple:
        """A shadow row saying the server deleted the row (no state, no
        version): kept while a policy keeps the local side of that delete."""
        return (self.table.name, key, key, None, None, now)

    def _shadow(self, key: str, row: Mapping[str, Any], now: float) -> dict[str, Any]:
        vf = self.table.routes.version_field
        version = row.get(vf) if vf else None
        return {"table_name": self.table.name, "row_key": key, "server_key": key,
                "version": None if version is None else str(version),
                "state": dict(row), "synced_at": now}

    def conflict(self, key: str, row: Mapping[str, Any] | None, local: dict[str, Any] | None,
                 ops: Sequence[ob.OutboxOp], known: shadow.ShadowRow | None) -> Conflict:
        """The :class:`Conflict` of a row with pending ``ops`` and server state ``row``."""
        info = self.info
        local_cols = None if ops[-1].op == OP_DELETE or local is None else local
        decoded = info.decode_key(key)
        return Conflict(
            table=self.table.name,
            key=decoded if len(info.pk_keys) > 1 else decoded[0],
            local=None if local_cols is None else self.table.item(local_cols),
            remote=None if row is None else dict(row),
            base=None if known is None else known.state,
            local_changed_at=max(op.changed_at for op in ops),
        )

    def _shadow_row(self, key: str, row: Mapping[str, Any], now: float) -> shadow.ShadowTuple:
        """:meth:`_shadow` as the tuple :func:`shadow.write_many` takes."""
        vf = self._version_field
        version = row.get(vf) if vf else None
        return (self.table.name, key, key, None if version is None else str(version),
                row if type(row) is dict else dict(row), now)

    def _resolve(
        self,
        conn: Connection,
        key: str,
        values: dict[str, Any],
        row: Mapping[str, Any] | None,
        local: dict[str, Any] | None,
        ops: list[ob.OutboxOp],
        known: shadow.ShadowRow | None,
        now: float,
        *,
        when: Mapping[str, Any] | None = None,
    ) -> tuple[Conflict, str]:
        """Decide and carry out one conflict; returns it and "remote", "local" or "merged".

        :param when: for a row deleted on the server, its tombstone or
            deletions-feed entry: lww reads the time of the delete from it.
        """
        info = self.info
        local_cols = None if ops[-1].op == OP_DELETE or local is None else local
        remote_cols = None if row is None else {**(local or {}), **values}
        base_cols = self.columns(known.state) if known and known.state is not None else None
        conflict = self.conflict(key, row, local, ops, known)
        outcome, merged = decide(
            self.conflicts, conflict, info.keys, local_cols, remote_cols, base_cols,
            self.remote_time(row if row is not None else when), self.columns)
        if outcome == "remote":
            self._drop_ops(conn, key)
        elif outcome == "local":
            self._rebase(conn, key, ops, remote_exists=row is not None)
        else:
            assert merged is not None
            self._write_row(conn, key, merged, local)
            if remote_cols is None:
                # Merged against a deleted row: the merged row is created again.
                self._rebase(conn, key, ops, remote_exists=False)
            else:
                self._drop_ops(conn, key)
                mask = 0
                for k in info.keys:
                    if merged.get(k) != remote_cols.get(k):
                        mask |= info.bits[k]
                write_ops(conn, [(self.table.name, key, OP_UPDATE, mask, None, now, now)])
        return dataclasses.replace(conflict, resolution=outcome), outcome

    def _rebase(self, conn: Connection, key: str, ops: Sequence[ob.OutboxOp], *,
                remote_exists: bool) -> None:
        """Keep the local change, sent as what the server now needs to reach it.

        Against a server without the row the first op that writes it becomes
        a create and later ones stay updates; against a server with the row a
        create becomes an update.  Every kept op gets a new Idempotency-Key and
        forgets what it first sent: an earlier attempt may have reached the
        server, which would answer the old key from its cache without applying
        the op.
        """
        exists = remote_exists
        for op in ops:
            values: dict[str, Any] = {"idempotency_key": None}
            if op.op == OP_DELETE:
                exists = False
            else:
                values["state"] = None
                if not exists:
                    values.update(op=OP_INSERT, changed=self.info.all_bits)
                    exists = True
                elif op.op == OP_INSERT:
                    values.update(op=OP_UPDATE, changed=self.info.all_bits)
            conn.execute(update(outbox).where(outbox.c.id == op.id).values(values))


# -- listing pages ---------------------------------------------------------------------


@dataclasses.dataclass
class _Listing:
    """Where a table's listing stands; stored as the checkpoint ``pull:<table>``."""

    value: Any = None
    key: Any = None
    ties: list[Any] = dataclasses.field(default_factory=list)
    paging: bool = False    # paging through one bound (more ties than a page holds)
    offset: int = 0         # the paginator offset of the next request while paging
    nxt: Any = None         # the server's next cursor/URL while paging one bound
    reconciled_at: float | None = None

    def dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, data: Any) -> _Listing:
        if not isinstance(data, dict):
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


class _Ahead:
    """The request of the next page, sent on a thread of its own while the
    current page is applied."""

    def __init__(self, fetch: Callable[[], Answer]) -> None:
        self._answer: Answer | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(fetch,),
                                        name="sqla-sync-pull-ahead", daemon=True)
        self._thread.start()

    def _run(self, fetch: Callable[[], Answer]) -> None:
        try:
            self._answer = fetch()
        except Exception as exc:  # raised where the answer is taken, as without a thread
            self._error = exc

    def wait(self) -> None:
        """Wait for the request to end, whatever it answered."""
        self._thread.join()

    def result(self) -> Answer:
        """The answer, or the request's error raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


class Puller:
    """Pulls the tables of one route table through one transport."""

    def __init__(
        self,
        db: Engine,
        routes: RouteTable,
        transport: Transport,
        *,
        conflicts: Conflicts,
        page_size: int = 100,
        max_pages: int = 10,
        clock: Callable[[], float] = time.time,
        emit: Emit | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.db = db
        self.routes = routes
        self.transport = transport
        self.conflicts = conflicts
        self.page_size = page_size
        self.max_pages = max_pages
        self.clock = clock
        self.emit: Emit = emit or (lambda name, **payload: None)
        self.fence = fence

    def tables(self) -> list[TableRoutes]:
        """Tables with a pull route, parents before children."""
        tables = [t for t in self.routes.values()
                  if t.routes.pull is not None or t.routes.deletions is not None]
        return sorted(tables, key=lambda t: t.info.depth)

    def pull(self, names: Iterable[str] | None = None) -> PullResult:
        """Pull every table (or ``names``); a failing table raises after the others ran."""
        started = time.monotonic()
        results: dict[str, TablePull] = {}
        errors: list[tuple[str, Exception]] = []
        wanted = set(names) if names is not None else None
        for table in self.tables():
            if wanted is not None and table.name not in wanted:
                continue
            try:
                results[table.name] = self.pull_table(table)
            except SyncError as exc:
                errors.append((table.name, exc))
        result = PullResult(
            pulled=sum(r.pulled for r in results.values()),
            deleted=sum(r.deleted for r in results.values()),
            conflicts=sum(r.conflicts for r in results.values()),
            pages=sum(r.pages for r in results.values()),
            duration=time.monotonic() - started,
            tables=results,
        )
        if errors:
            name, first = errors[0]
            where = "" if str(first).startswith(f"{name}:") else f"{name}: "
            raise PullError(f"pull failed for {len(errors)} table(s): {where}{first}") from first
        return result

    # -- one table ----------------------------------------------------------------------

    def pull_table(self, table: TableRoutes) -> TablePull:
        """Pull one table: its deletions feed, then its changes (and reconciliation)."""
        stats = {"pulled": 0, "deleted": 0, "conflicts": 0, "pages": 0}
        complete = True
        if table.routes.deletions is not None:
            complete &= self._listing(table, table.routes.deletions, stats, deletions=True)
        pull = table.routes.pull
        if pull is not None:
            complete &= self._listing(table, pull, stats, deletions=False)
        return TablePull(complete=complete, **stats)

    def _name(self, table: TableRoutes, deletions: bool) -> str:
        return f"pull:{table.name}" + (":deletions" if deletions else "")

    def _listing(self, table: TableRoutes, pull: Pull, stats: dict[str, int], *,
                 deletions: bool) -> bool:
        name = self._name(table, deletions)
        with self.db.connect() as conn:
            state = _Listing.load(cp.get_checkpoint(conn, name)) if pull.cursor else _Listing()
            if pull.cursor is None and not deletions:
                reconciled = cp.get_checkpoint(conn, name + ":reconciled")
                state.reconciled_at = reconciled
        now = self.clock()
        reconcile = (
            not deletions and pull.reconcile
            and (state.reconciled_at is None
                 or now - state.reconciled_at >= pull.reconcile_interval)
        )
        fresh = pull.cursor is not None and state.value is None and not state.nxt
        if reconcile and not fresh:
            self._reconcile(table, pull, stats, now)
            reconcile = False
        seen: set[str] | None = set() if reconcile else None
        complete = self._pages(table, pull, state, stats, name, deletions, seen)
        if seen is not None and complete:
            self._remove_absent(table, seen, stats)
            self._mark_reconciled(table, pull, name, state, now)
        return complete

    def _page_size_param(self, pull: Pull) -> str | None:
        if pull.cursor is not None and pull.cursor.size_param:
            return pull.cursor.size_param
        pager = pull.paginate
        return getattr(pager, "size_param", None) if pager is not None else None

    def _query(self, pull: Pull, ctx: PullContext) -> dict[str, Any]:
        query = pull.query(ctx) if callable(pull.query) else pull.query
        return dict(query or {})

    def _request(self, table: TableRoutes, pull: Pull, url: str,
                 params: Mapping[str, Any] | None) -> Answer:
        headers = pull.headers() if callable(pull.headers) else pull.headers
        try:
            answer = self.transport.request("GET", url, params=params, headers=headers)
        except TransportError as exc:
            raise PullError(f"{table.name}: {exc}") from exc
        if not 200 <= answer.status < 300:
            raise PullError(f"{table.name}: GET {answer.path} answered {answer.status}")
        return answer

    def _rows(self, table: TableRoutes, pull: Pull, answer: Answer) -> list[Any]:
        body = answer.body
        try:
            rows = pull.map_response(body) if pull.map_response is not None else body
        except Exception as exc:
            raise PullError(f"{table.name}: map_response failed on GET {answer.path}: "
                            f"{type(exc).__name__}: {exc}") from None
        if rows is None:
            return []
        if not isinstance(rows, list):
            raise PullError(f"{table.name}: GET {answer.path} gave {type(rows).__name__}, "
                            "not a list of rows; set map_response (e.g. lambda b: b['data'])")
        return rows

    def _pages(self, table: TableRoutes, pull: Pull, state: _Listing, stats: dict[str, int],
               name: str, deletions: bool, seen: set[str] | None) -> bool:
        """Fetch and apply pages until the listing ends or ``max_pages`` is reached.

        Where the next request depends on nothing a page's transaction writes
        (no callable ``query`` or ``headers``, no ``on_complete``), it is sent
        while the page is applied, so that the server's time and the local
        writes overlap; its answer is used only once the page has committed.

        :return: True when the listing reached its end.
        """
        cursor = pull.cursor
        size_param = self._page_size_param(pull)
        pager = pull.paginate
        size = self.page_size
        applier = Applier(table, self.conflicts, self.clock,
                          cursor.field if cursor is not None else None)
        page_index = 0      # pages of one bound, for paginators without a cursor
        next_url: str | None = None
        limit = self.max_pages if seen is None else 10**6
        ahead_ok = (not callable(pull.query) and not callable(pull.headers)
                    and pull.on_complete is None)
        ahead: _Ahead | None = None
        try:
            for index in range(limit):
                if ahead is not None:
                    answer, ahead = ahead.result(), None
                else:
                    url, params = self._next_request(table, pull, state, page_index, next_url)
                    answer = self._request(table, pull, url, params)
                rows = self._rows(table, pull, answer)
                stats["pages"] += 1
                known = set(map(_tie, state.ties))
                try:
                    fresh_rows, advanced = (self._dedupe(cursor, state, rows)
                                            if cursor is not None else (rows, True))
                except PullError as exc:  # name the table and the request
                    raise PullError(f"{table.name}: GET {answer.path}: {exc}") from None
                try:
                    full = size_param is not None and len(rows) >= size
                    more, next_url = self._next(pager, answer, rows, full, cursor, state,
                                                advanced, known)
                    if cursor is not None:
                        next_url = None  # with a cursor, a next link lives in state.nxt
                    if more and ahead_ok and index + 1 < limit:
                        ahead = self._send_ahead(table, pull, state, page_index + 1, next_url)
                    with self.db.begin() as conn:
                        if self.fence is not None:
                            self.fence(conn)
                        now = self.clock()
                        if deletions:
                            keys = [self._deleted_key(applier, r) for r in fresh_rows]
                            entries = {k: r for k, r in zip(keys, fresh_rows)
                                       if isinstance(r, Mapping)}
                            written, removed, conflicts = applier.apply(
                                conn, [], deleted_keys=keys, deleted_rows=entries, now=now)
                        else:
                            written, removed, conflicts = applier.apply(conn, fresh_rows,
                                                                        now=now)
                        if seen is not None:
                            for r in rows:
                                if isinstance(r, Mapping):
                                    seen.add(applier.key_of(applier.columns(r)))
                        if cursor is not None and name:
                            cp.set_checkpoint(conn, name, state.dump(), now)
                        if pull.on_complete is not None:
                            done_ctx = PullContext(table.name, conn, self.db, now,
                                                   state.dump() if cursor else None, page_index)
                            done_ctx.response = PageResponse(answer.status, dict(answer.headers))
                            pull.on_complete(answer.body, done_ctx)
                except SyncError:
                    raise
                except Exception as exc:  # a row the database refuses, a failing on_complete
                    raise PullError(
                        f"{table.name}: a page of GET {answer.path} was not applied (nothing of "
                        f"it was written; the next pull fetches it again): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                stats["pulled"] += written
                stats["deleted"] += removed
                stats["conflicts"] += len(conflicts)
                for conflict in conflicts:
                    self.emit("conflict", conflict=conflict)
                page_index += 1
                if not more:
                    return True
            return False
        finally:
            if ahead is not None:
                ahead.wait()  # a page failed: its successor's request is not left running

    def _send_ahead(self, table: TableRoutes, pull: Pull, state: _Listing, page_index: int,
                    next_url: str | None) -> _Ahead | None:
        """Send the next page's request on its own thread; None when it cannot
        be built now (the next turn builds it again and raises what it raises,
        after this page has committed, as without sending ahead)."""
        try:
            url, params = self._next_request(table, pull, state, page_index, next_url)
        except Exception:
            return None
        return _Ahead(functools.partial(self._request, table, pull, url, params))

    def _next_request(self, table: TableRoutes, pull: Pull, state: _Listing, page_index: int,
                      next_url: str | None) -> tuple[str, dict[str, Any]]:
        """URL and query parameters of the next page's request."""
        cursor = pull.cursor
        pager = pull.paginate
        ctx = PullContext(table.name, None, self.db, self.clock(),
                          state.dump() if cursor else None, page_index)
        params = self._query(pull, ctx)
        if cursor is not None and state.paging and state.nxt and isinstance(pager, NextLink):
            return str(state.nxt), {}
        if next_url is not None:
            return next_url, {}
        if cursor is not None:
            params.update(self._bound(cursor, state))
        size_param = self._page_size_param(pull)
        if size_param:
            params[size_param] = self.page_size
        params.update(self._paging(pager, state, page_index, self.page_size, cursor))
        return pull.url, params

    def _deleted_key(self, applier: Applier, row: Any) -> str:
        if isinstance(row, Mapping):
            return applier.key_of(applier.columns(row))
        info = applier.info
        return info.encode_key([info.pk_codecs[0].decode(row)])

    # -- cursor ---------------------------------------------------------------------------

    def _bound(self, cursor: Cursor, state: _Listing) -> dict[str, Any]:
        if cursor.query is not None:
            pos = None if state.value is None else Position(state.value, state.key)
            return dict(cursor.query(pos))
        if state.value is None or cursor.param is None:
            return {}
        value = state.value if cursor.inclusive else _one_unit_below(state.value)
        text = cursor.format(value) if cursor.format is not None else value
        return {cursor.param: text}

    def _dedupe(self, cursor: Cursor, state: _Listing,
                rows: Sequence[Any]) -> tuple[list[Any], bool]:
        """Drop rows already applied; advance the cursor state over the rest.

        :return: (new rows, whether the cursor value moved past its old value).
        """
        start = None if state.value is None else _order_value(state.value)
        current = start
        ties = set(map(_tie, state.ties))
        fresh = []
        advanced = False
        for row in rows:
            if not isinstance(row, Mapping) or cursor.field not in row:
                raise PullError(f"a listed row has no {cursor.field!r} (the cursor field)")
            value = row[cursor.field]
            order = _order_value(value)
            key = row.get(cursor.key)
            if start is not None and (_lt(order, start) or (order == start and _tie(key) in ties)):
                continue
            fresh.append(row)
            if current is None or _lt(current, order):
                state.value, state.key, state.ties = value, key, [key]
                current = order
                advanced = True
            elif order == current:
                state.key = key
                state.ties.append(key)
        return fresh, advanced

    def _paging(self, pager: Any, state: _Listing, page_index: int, size: int,
                cursor: Cursor | None) -> dict[str, Any]:
        """Paginator parameters: with a cursor only while one bound is paged through."""
        if cursor is not None and not state.paging:
            return {}
        offset = state.offset if cursor is not None else page_index * size
        if isinstance(pager, PageNumber):
            return {pager.param: pager.start + offset // size}
        if isinstance(pager, Offset):
            return {pager.param: offset}
        if isinstance(pager, BodyCursor) and state.nxt:
            return {pager.param: state.nxt}
        return {}

    def _next(self, pager: Any, answer: Answer, rows: Sequence[Any], full: bool,
              cursor: Cursor | None, state: _Listing, advanced: bool,
              known: set[str]) -> tuple[bool, str | None]:
        """Whether another page follows, and the next page's URL (NextLink).

        ``known`` are the tie keys applied before this page, for the back-up
        check while one bound is paged through.
        """
        if cursor is None:
            if isinstance(pager, NextLink):
                link = _next_link(pager, answer)
                return link is not None, link
            if isinstance(pager, BodyCursor):
                token = pager.body(answer.body)
                state.nxt = token
                return token is not None and bool(rows), None
            return full and pager is not None, None
        was_paging, requested = state.paging, state.offset
        state.paging, state.offset, state.nxt = False, 0, None
        offsets = isinstance(pager, (PageNumber, Offset))
        if was_paging and offsets and requested > 0 and rows:
            first = rows[0]
            if not (isinstance(first, Mapping) and _tie(first.get(cursor.key)) in known):
                # Rows left the group while we paged it (they changed on the
                # server), so positions moved down: back up so none is skipped.
                state.paging, state.offset = True, max(0, requested - self.page_size)
                return True, None
        if not full:
            return False, None
        if (advanced and len(state.ties) < self.page_size) or cursor.query is not None:
            return True, None  # the bound moves on (or the keyset query does)
        # More rows share one value than a page holds: page through that bound.
        state.paging = True
        if offsets:
            here = _order_value(state.value)
            at_value = sum(1 for r in rows if isinstance(r, Mapping)
                           and _order_value(r.get(cursor.field)) == here)
            # Offsets overlap the rows already seen a little (page numbers cannot).
            slack = max(1, self.page_size // 10) if isinstance(pager, Offset) else 0
            base = requested if was_paging and not advanced else 0
            state.offset = max(0, base + at_value - slack)
            return True, None
        if isinstance(pager, NextLink):
            link = _next_link(pager, answer)
            state.nxt = link
            return link is not None, link
        if isinstance(pager, BodyCursor):
            token = pager.body(answer.body)
            state.nxt = token
            return token is not None, None
        raise PullError(
            f"more rows share {cursor.field}={state.value!r} than a page of "
            f"{self.page_size} holds, and the route cannot page through them; add "
            "paginate= (PageNumber/Offset/BodyCursor/NextLink), Cursor(query=...), or a "
            "larger pull_page_size"
        )

    # -- reconciliation ---------------------------------------------------------------------

    def _reconcile(self, table: TableRoutes, pull: Pull, stats: dict[str, int],
                   now: float) -> None:
        """List the whole collection without the cursor and delete the absent."""
        unbounded = dataclasses.replace(pull, cursor=None, reconcile=False)
        seen: set[str] = set()
        scratch = _Listing()
        if self._pages(table, unbounded, scratch, stats, "", False, seen):
            self._remove_absent(table, seen, stats)
            self._mark_reconciled(table, pull, self._name(table, False), None, now)

    def _remove_absent(self, table: TableRoutes, seen: set[str], stats: dict[str, int]) -> None:
        info = table.info
        with self.db.begin() as conn:
            if self.fence is not None:
                self.fence(conn)
            pk_cols = [info.columns[k] for k in info.pk_keys]
            local_keys = {info.encode_key(row) for row in conn.execute(select(*pk_cols))}
            busy = {k for (k,) in conn.execute(select(outbox.c.row_key).where(
                outbox.c.table_name == table.name, outbox.c.status == STATUS_PENDING))}
            absent = sorted(local_keys - seen - busy)
            applier = Applier(table, self.conflicts, self.clock, None)
            for key in absent:
                stats["deleted"] += applier._delete_row(conn, key)
            shadow.delete_many(conn, table.name, absent)

    def _mark_reconciled(self, table: TableRoutes, pull: Pull, name: str,
                         state: _Listing | None, now: float) -> None:
        with self.db.begin() as conn:
            if pull.cursor is not None:
                current = _Listing.load(cp.get_checkpoint(conn, name))
                current.reconciled_at = now
                cp.set_checkpoint(conn, name, current.dump(), now)
            else:
                cp.set_checkpoint(conn, name + ":reconciled", now, now)


def _tie(key: Any) -> str:
    return repr(key)


def _lt(a: float | str, b: float | str) -> bool:
    if type(a) is type(b):
        return a < b  # type: ignore[operator]
    return str(a) < str(b)


def _next_link(pager: NextLink, answer: Answer) -> str | None:
    if pager.body is not None:
        value = pager.body(answer.body)
        return str(value) if value else None
    if pager.header is None:
        return None
    raw = answer.headers.get(pager.header)
    if not raw:
        return None
    if pager.header.lower() != "link":
        return raw.strip()
    for part in raw.split(","):
        section = part.split(";")
        target = section[0].strip()
        params = [p.strip().lower().replace(" ", "") for p in section[1:]]
        if any(p in ('rel="next"', "rel=next") for p in params):
            return target.strip("<>")
    return None


