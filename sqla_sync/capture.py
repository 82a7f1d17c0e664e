"""Change capture: session listeners that fill the outbox in the user's transaction.

:func:`track` installs, on the one Session, sessionmaker or Session class it
is given, an ``after_flush`` listener that turns the flushed inserts, updates
and deletes of :class:`~sqla_sync.Syncable` models into outbox ops, written
with one Core executemany (on PostgreSQL one statement over arrays) on the
session's own connection.  Because the ops
are written inside the flush, a rollback (or a rolled-back savepoint) takes
them away with the rows they describe, and a commit always keeps them.

Compaction happens in the same statement: the write is an upsert keyed by
``(table_name, row_key, lane)``, and a change meets the pending op of its row
in lane 0 and folds into it (insert+update -> insert, insert+delete ->
nothing, update+update -> update, update+delete -> delete, delete+insert ->
update).  An op claimed by a push has left lane 0, so nothing folds into it.

ORM-enabled bulk statements are captured in ``do_orm_execute``: INSERT and
UPDATE with parameter lists from the parameters, UPDATE and DELETE with a
WHERE clause through a key pre-select in the same transaction.  Writes made
inside :func:`suppress_capture` (pull, conflict resolution) are not captured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    String,
    Text,
    and_,
    bindparam,
    case,
    event,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, sessionmaker
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql.dml import Insert

from .codec import dumps
from .errors import (
    ConfigurationError,
    UnsupportedDialectError,
    UnsupportedStatementError,
    UntrackedSessionError,
)
from .mixin import (
    SUPPRESS_KEY,
    TRACKED_ATTR,
    TRACKED_KEY,
    ModelInfo,
    is_tracked,
    model_info,
    refuse_read_only,
)
from .signals import outbox_committed
from .tables import OP_DELETE, OP_INSERT, OP_UPDATE, outbox

__all__ = [
    "Clock",
    "bulk_guard",
    "fold",
    "suppress_capture",
    "track",
    "untrack",
    "write_ops",
]

#: A clock returns the local time as epoch seconds; tests inject their own.
Clock = Callable[[], float]

_NONE = "none"
_CAPTURE_ATTR = "_sqla_sync_capture"
_TABLES_KEY = "sqla_sync.tables"

#: Compaction of a pending op (first) with a new change (second).  Pairs not
#: listed take the new op.  ``none`` means the two cancel out.
_FOLD: dict[tuple[str, str], str] = {
    (OP_INSERT, OP_UPDATE): OP_INSERT,
    (OP_INSERT, OP_DELETE): _NONE,
    (OP_INSERT, OP_INSERT): OP_INSERT,
    (OP_UPDATE, OP_UPDATE): OP_UPDATE,
    (OP_UPDATE, OP_DELETE): OP_DELETE,
    (OP_DELETE, OP_INSERT): OP_UPDATE,
}


def fold(pending: str, new: str) -> str:
    """The op a pending op becomes when a new change of the same row arrives."""
    return _FOLD.get((pending, new), new)


# -- writing ops -------------------------------------------------------------


def _insert(dialect_name: str) -> Any:
    if dialect_name == "sqlite":
        return sqlite.insert(outbox)
    if dialect_name == "postgresql":
        return postgresql.insert(outbox)
    if dialect_name in ("mysql", "mariadb"):
        return mysql.insert(outbox)
    raise UnsupportedDialectError(
        f"sqla_sync cannot keep an outbox on {dialect_name!r}; "
        "use SQLite, PostgreSQL or MySQL/MariaDB"
    )


def _on_conflict(ins: Any, dialect_name: str) -> Any:
    """``ins`` with the compaction of :data:`_FOLD` as its conflict clause."""
    c = outbox.c
    new = ins.inserted if dialect_name in ("mysql", "mariadb") else ins.excluded
    # Constants are rendered inline: PyMySQL's executemany rewrites the
    # statement and cannot take bound parameters after VALUES.
    def lit(value: str) -> Any:
        return literal_column(f"'{value}'")

    op_case = case(
        *(
            (and_(c.op == lit(old), new.op == lit(change)), lit(result))
            for (old, change), result in _FOLD.items()
        ),
        else_=new.op,
    )
    assignments = [
        ("changed", c.changed.op("|")(new.changed)),
        ("state", new.state),
        ("changed_at", new.changed_at),
        # Last: MySQL evaluates assignments in order and the others read c.op.
        ("op", op_case),
    ]
    if dialect_name in ("mysql", "mariadb"):
        return ins.on_duplicate_key_update(assignments)
    return ins.on_conflict_do_update(
        index_elements=[c.table_name, c.row_key, c.lane], set_=dict(assignments)
    )


#: The outbox columns an upsert sets, in the order of :func:`write_ops`' tuples.
OP_COLUMNS = ("table_name", "row_key", "op", "changed", "state", "changed_at", "created_at")


@lru_cache(maxsize=8)
def _upsert(dialect_name: str) -> Any:
    return _on_conflict(_insert(dialect_name), dialect_name)


#: The element types of the arrays :data:`_pg_upsert` unnests, in
#: :data:`OP_COLUMNS` order.
_PG_ARRAYS = (String, String, String, BigInteger, Text, Double, Double)


def _pg_upsert_statement() -> Any:
    """PostgreSQL: the whole batch as one statement, ``INSERT .. SELECT FROM
    unnest(arrays) WITH ORDINALITY ORDER BY ordinality``, so that the
    outbox's statement triggers (which keep the queue depth) run once per
    flush, and the rows get their ids in the batch's order."""
    rows = func.unnest(
        *(bindparam(f"a{i}", type_=postgresql.ARRAY(t)) for i, t in enumerate(_PG_ARRAYS))
    ).table_valued(*OP_COLUMNS, with_ordinality="n").render_derived()
    source = select(*(rows.c[name] for name in OP_COLUMNS)).order_by(rows.c.n)
    return _on_conflict(postgresql.insert(outbox).from_select(OP_COLUMNS, source), "postgresql")


_pg_upsert = _pg_upsert_statement()

#: PostgreSQL: the cleanup of :data:`_cleanup` as one statement over key arrays.
_pg_keys = func.unnest(
    bindparam("t", type_=postgresql.ARRAY(String)), bindparam("k", type_=postgresql.ARRAY(String))
).table_valued("t", "k").render_derived()
_pg_cleanup = outbox.delete().where(
    tuple_(outbox.c.table_name, outbox.c.row_key).in_(select(_pg_keys.c.t, _pg_keys.c.k)),
    outbox.c.lane == literal_column("0"),
    outbox.c.op == literal_column(f"'{_NONE}'"),
)


_cleanup = outbox.delete().where(
    outbox.c.table_name == bindparam("t"),
    outbox.c.row_key == bindparam("k"),
    outbox.c.lane == 0,
    outbox.c.op == _NONE,
)



def _compile(stmt: Any, dialect: Any, schemas: tuple[tuple[str | None, str | None], ...] | None
             ) -> tuple[str, tuple[str, ...] | None]:
    compiled = stmt.compile(dialect=dialect, schema_translate_map=dict(schemas or ()),
                            render_schema_translate=bool(schemas))
    positions = compiled.positiontup
    return str(compiled), tuple(positions) if positions is not None else None


@lru_cache(maxsize=32)
def _driver_upsert(
    dialect: Any, schemas: tuple[tuple[str | None, str | None], ...] | None
) -> tuple[str, tuple[str, ...] | None]:
    """The upsert as the driver's SQL text, compiled once per dialect and
    ``schema_translate_map`` (as items), and the order of its positional
    parameters (None for a named paramstyle)."""
    stmt = _upsert(dialect.name).values({name: bindparam(name) for name in OP_COLUMNS})
    return _compile(stmt, dialect, schemas)


@lru_cache(maxsize=32)
def _driver_pg(
    dialect: Any, schemas: tuple[tuple[str | None, str | None], ...] | None
) -> tuple[tuple[str, tuple[str, ...] | None], tuple[str, tuple[str, ...] | None]]:
    """PostgreSQL: the array upsert and the array cleanup as the driver's SQL
    (see :func:`_driver_upsert`); the driver adapts the lists to arrays, so
    no Core parameter processing runs per flush."""
    return _compile(_pg_upsert, dialect, schemas), _compile(_pg_cleanup, dialect, schemas)


def _driver_params(values: dict[str, Any], positions: tuple[str, ...] | None) -> Any:
    return values if positions is None else tuple(values[name] for name in positions)


def write_ops(connection: Connection, rows: Sequence[tuple[Any, ...]],
              schemas: Mapping[str | None, str | None] | None = None) -> None:
    """Fold ``rows`` (tuples in :data:`OP_COLUMNS` order, one per row key) into
    the outbox.

    One upsert executemany, sent as the driver's own SQL so that no per-row
    parameter processing runs, plus one cleanup executemany when a delete may
    have cancelled a pending insert; on PostgreSQL each of the two is one
    statement over arrays instead (see :func:`_pg_upsert_statement`).  Runs on
    the caller's connection, so the ops belong to the caller's transaction.

    :param schemas: a ``schema_translate_map`` given to one statement, which
        overrides the connection's (None: the connection's own).
    """
    if not rows:
        return
    options = {} if schemas is None else {"schema_translate_map": schemas}
    if schemas is None:
        schemas = connection.get_execution_options().get("schema_translate_map")
    schema_items = tuple(schemas.items()) if schemas else None
    if connection.dialect.name == "postgresql":
        (upsert, upsert_at), (cleanup, cleanup_at) = _driver_pg(connection.dialect, schema_items)
        arrays = {f"a{i}": list(column) for i, column in enumerate(zip(*rows))}
        connection.exec_driver_sql(upsert, _driver_params(arrays, upsert_at))
        deleted = [(r[0], r[1]) for r in rows if r[2] == OP_DELETE]
        if deleted:
            tables, keys = zip(*deleted)
            connection.exec_driver_sql(
                cleanup, _driver_params({"t": list(tables), "k": list(keys)}, cleanup_at))
        return
    sql, positions = _driver_upsert(connection.dialect, schema_items)
    if positions is None:
        params: list[Any] = [dict(zip(OP_COLUMNS, row)) for row in rows]
    elif positions == OP_COLUMNS:
        params = list(rows)
    else:
        index = [OP_COLUMNS.index(name) for name in positions]
        params = [tuple(row[i] for i in index) for row in rows]
    connection.exec_driver_sql(sql, params)
    gone = [{"t": r[0], "k": r[1]} for r in rows if r[2] == OP_DELETE]
    if gone:
        connection.execute(_cleanup, gone, execution_options=options)


class _Batch:
    """The ops of one flush or statement, folded per row before they are written.

    Per model: row key -> the upsert's parameter tuple (:data:`OP_COLUMNS`
    order), replaced when a later change of the row folds into it: one object
    per row, so that a flush of 20,000 rows allocates as little as it can.
    """

    __slots__ = ("now", "ops")

    def __init__(self, now: float) -> None:
        self.now = now
        self.ops: dict[ModelInfo, dict[str, tuple[Any, ...]]] = {}

    def add(self, info: ModelInfo, key: str, op: str, mask: int, state: str | None) -> None:
        rows = self.ops.get(info)
        if rows is None:
            rows = self.ops[info] = {}
        known = rows.get(key)
        if known is not None:
            op, mask = fold(known[2], op), known[3] | mask
        rows[key] = (info.table_name, key, op, mask, state, self.now, self.now)

    def params(self) -> list[tuple[Any, ...]]:
        """Upsert parameters in the order the ops get their ids: parents'
        inserts and updates before children's, children's deletes before
        parents'.

        Within a table, inserts keep the unit of work's order (the order the
        rows were created in), then come updates sorted by row key, then
        deletes: the order the ORM itself writes them in.  Sorting the updates
        lets the upsert walk the outbox's key index in order instead of
        jumping around it, which is most of what a large update flush costs
        there.  (Push waits for a parent's pending insert wherever it stands
        in the queue.)
        """
        out: list[tuple[Any, ...]] = []
        deletes: list[tuple[Any, ...]] = []
        for info in sorted(self.ops, key=lambda i: -i.depth):  # children's deletes first
            deletes.extend(row for row in self.ops[info].values() if row[2] == OP_DELETE)
        for info in sorted(self.ops, key=lambda i: i.depth):
            updates = []
            for row in self.ops[info].values():
                op = row[2]
                if op == OP_INSERT:
                    out.append(row)
                elif op == OP_UPDATE:
                    updates.append(row)
                # deletes: above; _NONE: created and deleted within this batch
            updates.sort(key=_row_key)
            out.extend(updates)
        out.extend(deletes)
        return out


def _row_key(row: tuple[Any, ...]) -> str:
    key: str = row[1]
    return key


# -- the listeners -----------------------------------------------------------


class _Capture:
    """The listeners :func:`track` installs on one target, sharing one clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        #: Per model, the function that turns an identity tuple into its row key.
        self.keyers: dict[ModelInfo, Callable[[Sequence[Any]], str]] = {}

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        if session.info.get(SUPPRESS_KEY):
            return
        batch: _Batch | None = None
        keyers = self.keyers
        for state, (isdelete, listonly) in flush_context.states.items():
            if listonly:
                continue
            info = state.class_.__dict__.get("__sqla_sync_model__")
            if info is None:
                continue
            if batch is None:
                batch = _Batch(self.clock())
            keyer = keyers.get(info)
            if keyer is None:
                keyer = keyers[info] = _keyer(info)
            d = state.dict
            if info.read_only and (isdelete or state.key is None
                                   or _changed_mask(info, state.committed_state, d)):
                refuse_read_only(info)  # added by a later before_flush listener
            if isdelete:
                ident = state.key[1] if state.key is not None else _pk(info, d)
                batch.add(info, keyer(ident), OP_DELETE, 0, dumps(info.encode_row(d)))
            elif state.key is None:
                batch.add(info, keyer(_pk(info, d)), OP_INSERT, info.all_bits, None)
            else:
                committed = state.committed_state
                if not committed:
                    continue
                mask = _changed_mask(info, committed, d)
                if not mask:
                    continue
                old_key = keyer(state.key[1])
                if mask & info.pk_bits and keyer(_pk(info, d)) != old_key:
                    # A changed primary key is a new row on the server.
                    old_row = {**d, **{k: v for k, v in committed.items() if v is not NO_VALUE}}
                    batch.add(info, old_key, OP_DELETE, 0, dumps(info.encode_row(old_row)))
                    batch.add(info, keyer(_pk(info, d)), OP_INSERT, info.all_bits, None)
                else:
                    batch.add(info, old_key, OP_UPDATE, mask, None)
        if batch is not None:
            _write_batch(session, batch)

    def do_orm_execute(self, state: ORMExecuteState) -> Any:
        if not (state.is_insert or state.is_update or state.is_delete):
            return None
        session = state.session
        if session.info.get(SUPPRESS_KEY):
            return None
        mapper = state.bind_mapper
        info = model_info(mapper.class_) if mapper is not None else None
        if info is None:
            return None
        if info.read_only:
            refuse_read_only(info)
        return _capture_statement(self, state, info)

    def after_commit(self, session: Session) -> None:
        tables = session.info.pop(_TABLES_KEY, None)
        if tables:
            outbox_committed.send(session, tables=frozenset(tables))

    def after_rollback(self, session: Session) -> None:
        session.info.pop(_TABLES_KEY, None)

    def after_soft_rollback(self, session: Session, previous_transaction: Any) -> None:
        if previous_transaction.parent is None:
            session.info.pop(_TABLES_KEY, None)

    _EVENTS = ("after_flush", "do_orm_execute", "after_commit", "after_rollback",
               "after_soft_rollback")

    def install(self, target: Any) -> None:
        for name in self._EVENTS:
            event.listen(target, name, getattr(self, name))

    def remove(self, target: Any) -> None:
        for name in self._EVENTS:
            fn = getattr(self, name)
            if event.contains(target, name, fn):
                event.remove(target, name, fn)


def _pk(info: ModelInfo, d: Mapping[str, Any]) -> tuple[Any, ...]:
    try:
        return tuple(d[k] for k in info.pk_keys)
    except KeyError as exc:
        raise UnsupportedStatementError(
            f"{info.mapper.class_.__name__}: primary key {exc.args[0]!r} is not known after "
            "flush; synced models need primary keys the ORM can read back"
        ) from None


def _keyer(info: ModelInfo) -> Callable[[Sequence[Any]], str]:
    """:meth:`ModelInfo.encode_key` of one model, with a shortcut for the common
    single string or integer primary key (whose codec passes values through)."""
    encode_key = info.encode_key
    if len(info.pk_keys) != 1:
        return encode_key
    type_ = info.columns[info.pk_keys[0]].type
    if isinstance(type_, sqltypes.String) and not isinstance(type_, sqltypes.Enum):

        def string_key(ident: Sequence[Any]) -> str:
            value = ident[0]
            if type(value) is str:
                return "[" + encode_basestring(value) + "]"
            return encode_key(ident)

        return string_key
    if isinstance(type_, sqltypes.Integer):

        def integer_key(ident: Sequence[Any]) -> str:
            value = ident[0]
            if type(value) is int:
                return f"[{value}]"
            return encode_key(ident)

        return integer_key
    return encode_key


def _changed_mask(info: ModelInfo, committed: Mapping[str, Any], d: Mapping[str, Any]) -> int:
    bits = info.bits
    mask = 0
    for key, old in committed.items():
        bit = bits.get(key)
        if bit is None:
            continue
        if old is NO_VALUE:
            mask |= bit
            continue
        new = d.get(key, NO_VALUE)
        if new is NO_VALUE or not info.impl_for(key).is_equal(new, old):
            mask |= bit
    return mask


def _write_batch(session: Session, batch: _Batch,
                 schemas: Mapping[str | None, str | None] | None = None) -> None:
    tables = session.info.setdefault(_TABLES_KEY, set())
    binds = {session.connection(bind_arguments={"mapper": info.mapper}) for info in batch.ops}
    if len(binds) == 1:
        write_ops(binds.pop(), batch.params(), schemas)
    else:  # models on several databases: each gets its own ops
        for info in batch.ops:
            part = _Batch(batch.now)
            part.ops[info] = batch.ops[info]
            write_ops(session.connection(bind_arguments={"mapper": info.mapper}), part.params(),
                      schemas)
    tables.update(info.table_name for info in batch.ops)


def _capture_statement(capture: _Capture, state: ORMExecuteState, info: ModelInfo) -> Any:
    session = state.session
    statement = state.statement
    params = state.parameters
    param_list: list[Mapping[str, Any]]
    if isinstance(params, Mapping):
        param_list = [params]
    elif params:
        param_list = list(params)
    else:
        param_list = []
    batch = _Batch(capture.clock())
    connection = session.connection(bind_arguments={"mapper": info.mapper})
    name = info.mapper.class_.__name__
    # A schema_translate_map given to this statement (not the engine) moves
    # its rows: the key pre-select and the ops follow it.
    schemas = state.execution_options.get("schema_translate_map")
    options = {} if schemas is None else {"schema_translate_map": schemas}

    if state.is_insert:
        assert isinstance(statement, Insert)
        rows = param_list or ([_statement_values(info, statement)] if statement else [])
        if getattr(statement, "_post_values_clause", None) is not None:
            raise UnsupportedStatementError(
                f"an ORM upsert (ON CONFLICT / ON DUPLICATE KEY) of {name} cannot be captured: "
                "it may insert or update; write the rows through the session instead"
            )
        keys = []
        for row in rows:
            missing = [k for k in info.pk_keys if row.get(k) is None]
            if missing:
                raise UnsupportedStatementError(
                    f"an ORM bulk INSERT of {name} without primary key values "  # noqa: S608
                    f"({', '.join(missing)}) cannot be captured: give every row its primary "
                    "key, or add the objects with session.add_all()"
                )
            keys.append(info.encode_key(row[k] for k in info.pk_keys))
        result = state.invoke_statement()
        for key in keys:
            batch.add(info, key, OP_INSERT, info.all_bits, None)
    elif param_list:
        # ORM bulk UPDATE by primary key: one parameter set per row.
        if state.is_delete:
            raise UnsupportedStatementError(
                f"an ORM bulk DELETE of {name} with parameter sets cannot be captured; "
                "use delete(...).where(...) or session.delete()"
            )
        pending = []
        for row in param_list:
            missing = [k for k in info.pk_keys if k not in row]
            if missing:
                raise UnsupportedStatementError(
                    f"an ORM bulk UPDATE of {name} needs the primary key in every parameter "
                    f"set; missing {', '.join(missing)}"
                )
            mask = 0
            for k in row:
                if k not in info.pk_keys:
                    mask |= info.bits.get(k, 0)
            pending.append((info.encode_key(row[k] for k in info.pk_keys), mask))
        result = state.invoke_statement()
        for key, mask in pending:
            if mask:
                batch.add(info, key, OP_UPDATE, mask, None)
    else:
        where = getattr(statement, "whereclause", None)
        if state.is_delete:
            cols = [info.columns[k] for k in info.keys]
        else:
            cols = [info.columns[k] for k in info.pk_keys]
        pre = select(*cols)
        if where is not None:
            pre = pre.where(where)
        found = connection.execute(pre.with_for_update(), execution_options=options).all()
        if state.is_delete:
            targets = []
            for found_row in found:
                values = dict(zip(info.keys, found_row))
                key = info.encode_key(values[k] for k in info.pk_keys)
                targets.append((key, dumps(info.encode_row(values))))
            result = state.invoke_statement()
            for key, snapshot in targets:
                batch.add(info, key, OP_DELETE, 0, snapshot)
        else:
            mask = _update_mask(info, statement)
            result = state.invoke_statement()
            if mask:
                for found_row in found:
                    batch.add(info, info.encode_key(found_row), OP_UPDATE, mask, None)
    if batch.ops:
        _write_batch(session, batch, schemas)
    return result


def _statement_values(info: ModelInfo, statement: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for col, value in (getattr(statement, "_values", None) or {}).items():
        key = col if isinstance(col, str) else getattr(col, "key", None)
        values[str(key)] = getattr(value, "value", value)
    return values


def _update_mask(info: ModelInfo, statement: Any) -> int:
    values = getattr(statement, "_values", None) or getattr(statement, "_ordered_values", None)
    if not values:
        return info.all_bits
    items = values.keys() if isinstance(values, Mapping) else (k for k, _ in values)
    mask = 0
    by_name = {col.name: key for key, col in info.columns.items()}
    for col in items:
        name = col if isinstance(col, str) else getattr(col, "key", None)
        key = name if name in info.bits else by_name.get(str(name))
        mask |= info.bits[key] if key is not None else info.all_bits
    return mask


def bulk_guard(state: ORMExecuteState) -> None:
    """Refuse ORM bulk writes of synced models in sessions :func:`track` never saw."""
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    session = state.session
    if is_tracked(session) or session.info.get(SUPPRESS_KEY):
        return
    mapper = state.bind_mapper
    info = model_info(mapper.class_) if mapper is not None else None
    if info is not None and info.read_only:
        refuse_read_only(info)
    if info is not None:
        raise UntrackedSessionError(
            f"an ORM bulk statement writes {info.mapper.class_.__name__}, which is Syncable, "
            "through "
            "a session sqla_sync does not track; call sqla_sync.track() on that session, "
            "its sessionmaker or its class first"
        )


#: The legacy bulk methods of :class:`~sqlalchemy.orm.Session`; they write
#: without any session or mapper event, so capture could not see them.
LEGACY_BULK_METHODS = ("bulk_save_objects", "bulk_insert_mappings", "bulk_update_mappings")


def legacy_bulk_guard(session: Session, method: str, target: Any) -> None:
    """Refuse a legacy bulk method that would write a synced model.

    ``Session.bulk_save_objects`` and ``bulk_insert_mappings`` /
    ``bulk_update_mappings`` skip every ORM event, so neither capture nor the
    untracked-session check would see their rows: the change would silently
    never reach the server.  The ORM-enabled ``insert()`` / ``update()`` with
    parameter lists do the same work and are captured.

    :param method: the method's name, for the message.
    :param target: the objects (``bulk_save_objects``) or the mapped class or
        mapper (the ``*_mappings`` methods).
    """
    if session.info.get(SUPPRESS_KEY):
        return
    if method == "bulk_save_objects":
        classes = {type(obj) for obj in target}
    else:  # a class, a Mapper, aliased() or with_polymorphic()
        found = sa_inspect(target, raiseerr=False)
        mapper = getattr(found, "mapper", None)
        classes = {mapper.class_ if mapper is not None else target}
    for cls in classes:
        info = model_info(cls)
        if info is None:
            continue
        if info.read_only:
            refuse_read_only(info)
        verb = "update(" if method == "bulk_update_mappings" else "insert("
        raise UnsupportedStatementError(
            f"Session.{method}() writes {cls.__name__}, which is Syncable, without any "
            "ORM event, so sqla_sync could not record the change; use "
            f"session.execute({verb}{cls.__name__}), [...]) (captured) or add_all()"
        )


# -- track / untrack ---------------------------------------------------------

TrackTarget = Any  # Session | sessionmaker | type[Session] | AsyncSession | async_sessionmaker


def _resolve(target: TrackTarget, create: bool) -> tuple[Any, Any]:
    """The event target and the object that carries the tracked flag."""
    if isinstance(target, sessionmaker):
        return target, target.class_
    if isinstance(target, type) and issubclass(target, Session):
        return target, target
    if isinstance(target, Session):
        return target, target
    try:
        # Only importable with greenlet installed (sqlalchemy[asyncio]).
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            f"track() takes a Session, sessionmaker or Session subclass, not "
            f"{type(target).__name__}"
        ) from None
    if isinstance(target, AsyncSession):
        return _resolve(target.sync_session, create)
    if isinstance(target, async_sessionmaker):
        sync_cls = target.kw.get("sync_session_class")
        if sync_cls is None or sync_cls is Session:
            if not create:
                return None, None
            sync_cls = type("TrackedSession", (Session,), {})
            target.kw["sync_session_class"] = sync_cls
        return sync_cls, sync_cls
    if isinstance(target, type) and issubclass(target, AsyncSession):
        if target is AsyncSession:
            raise ConfigurationError(
                "track(AsyncSession) would track every AsyncSession in the process; "
                "track your async_sessionmaker or an AsyncSession subclass instead"
            )
        sync_cls = target.sync_session_class
        if sync_cls is Session:
            if not create:
                return None, None
            sync_cls = type("TrackedSession", (Session,), {})
            target.sync_session_class = sync_cls
        return sync_cls, sync_cls
    raise ConfigurationError(
        f"track() takes a Session, sessionmaker, Session subclass, AsyncSession or "
        f"async_sessionmaker, not {type(target).__name__}"
    )


def track(target: TrackTarget, *, clock: Clock = time.time) -> TrackTarget:
    """Capture every change of a Syncable model made through ``target`` into the outbox.

    ``target`` is a :class:`~sqlalchemy.orm.Session`, a ``sessionmaker``, a
    Session subclass, an ``AsyncSession`` or an ``async_sessionmaker``; only
    sessions of that target are listened to.  Calling it twice is harmless.

    :param clock: returns the local time of a change as epoch seconds.
    :return: ``target``, so that ``Session = track(sessionmaker(engine))`` reads well.
    """
    event_target, flag_holder = _resolve(target, create=True)
    if getattr(event_target, _CAPTURE_ATTR, None) is None or (
        isinstance(event_target, type) and _CAPTURE_ATTR not in event_target.__dict__
    ):
        capture = _Capture(clock)
        capture.install(event_target)
        setattr(event_target, _CAPTURE_ATTR, capture)
    if isinstance(flag_holder, Session):
        flag_holder.info[TRACKED_KEY] = True
    else:
        setattr(flag_holder, TRACKED_ATTR, True)
    return target


def untrack(target: TrackTarget) -> None:
    """Remove what :func:`track` installed on ``target``; harmless if it was never tracked."""
    event_target, flag_holder = _resolve(target, create=False)
    if event_target is None:
        return
    owned = (
        event_target.__dict__.get(_CAPTURE_ATTR)
        if isinstance(event_target, type)
        else getattr(event_target, _CAPTURE_ATTR, None)
    )
    if isinstance(owned, _Capture):
        owned.remove(event_target)
        if isinstance(event_target, type):
            delattr(event_target, _CAPTURE_ATTR)
        else:
            setattr(event_target, _CAPTURE_ATTR, None)
    if isinstance(flag_holder, Session):
        flag_holder.info.pop(TRACKED_KEY, None)
    elif isinstance(flag_holder, type) and TRACKED_ATTR in flag_holder.__dict__:
        delattr(flag_holder, TRACKED_ATTR)
    elif flag_holder is not None and hasattr(flag_holder, TRACKED_ATTR):
        delattr(flag_holder, TRACKED_ATTR)


@contextmanager
def suppress_capture(session: Session) -> Iterator[Session]:
    """Within the block, writes through ``session`` are not captured.

    Pull and conflict resolution write the server's state this way, so that it
    is not sent back to the server.  Nests; works in untracked sessions too.
    """
    info = session.info
    info[SUPPRESS_KEY] = info.get(SUPPRESS_KEY, 0) + 1
    try:
        yield session
    finally:
        depth = info[SUPPRESS_KEY] - 1
        if depth:
            info[SUPPRESS_KEY] = depth
        else:
            del info[SUPPRESS_KEY]


