"""The shadow table: the last known server state of each synced row.

Push writes what the server answered; pull writes what it listed.  Conflict
detection compares a pulled row with it, merge uses it as the base, and
``if_match`` routes send its version.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

from .codec import dumps, loads
from .tables import shadow

__all__ = ["ShadowRow", "ShadowTuple", "delete_many", "get_many", "rekey", "upsert_many",
           "write_many"]


@dataclasses.dataclass(frozen=True)
class ShadowRow:
    """What the library last knew of a row on the server."""

    table_name: str
    row_key: str
    server_key: str | None
    version: str | None
    state: dict[str, Any] | None
    synced_at: float


def get_many(conn: Connection, table_name: str, keys: Iterable[str]) -> dict[str, ShadowRow]:
    """Shadow rows of ``keys`` (row key texts) of one table, by key."""
    wanted = list(dict.fromkeys(keys))
    found: dict[str, ShadowRow] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        stmt = select(shadow).where(shadow.c.table_name == table_name,
                                    shadow.c.row_key.in_(chunk))
        for row in conn.execute(stmt).mappings():
            state = row["state"]
            found[row["row_key"]] = ShadowRow(
                row["table_name"], row["row_key"], row["server_key"], row["version"],
                loads(state) if state is not None else None, row["synced_at"],
            )
    return found


_delete_one = delete(shadow).where(
    shadow.c.table_name == bindparam("t"), shadow.c.row_key == bindparam("k")
)


#: A shadow row to write: (table_name, row_key, server_key, version, state, synced_at);
#: the state is a JSON-ready value (or None), written as JSON text.
ShadowTuple = tuple[str, str, "str | None", "str | None", Any, float]

#: The shadow's columns in the order of :data:`ShadowTuple`.
_COLUMNS = ("table_name", "row_key", "server_key", "version", "state", "synced_at")

#: The columns an upsert replaces in an existing shadow row.
_REPLACED = ("server_key", "version", "state", "synced_at")


@dataclasses.dataclass(frozen=True)
class _Upsert:
    """The shadow upsert of one dialect, compiled once: its SQL text and, for a
    positional paramstyle, where each :data:`ShadowTuple` item goes."""

    sql: str
    positions: tuple[int, ...] | None


#: Per dialect (name, server version): its upsert, or None when it has none.
_UPSERTS: dict[tuple[Any, ...], _Upsert | None] = {}


def _upsert_statement(dialect: Dialect) -> Insert | None:
    """``INSERT .. ON CONFLICT DO UPDATE`` (SQLite >= 3.24, PostgreSQL) or
    ``.. ON DUPLICATE KEY UPDATE`` (MySQL, MariaDB) of the shadow table."""
    version = getattr(dialect, "server_version_info", None)
    if dialect.name == "sqlite" and version is not None and tuple(version) >= (3, 24):
        lite = sqlite.insert(shadow)
        return lite.on_conflict_do_update(
            index_elements=[shadow.c.table_name, shadow.c.row_key],
            set_={name: lite.excluded[name] for name in _REPLACED})
    if dialect.name == "postgresql":
        pg = postgresql.insert(shadow)
        return pg.on_conflict_do_update(
            index_elements=[shadow.c.table_name, shadow.c.row_key],
            set_={name: pg.excluded[name] for name in _REPLACED})
    if dialect.name in ("mysql", "mariadb"):
        my = mysql.insert(shadow)
        return my.on_duplicate_key_update({name: my.inserted[name] for name in _REPLACED})
    return None


def _upsert(conn: Connection) -> _Upsert | None:
    dialect = conn.dialect
    schemas = conn.get_execution_options().get("schema_translate_map")
    cache_key = (dialect.name, getattr(dialect, "server_version_info", None),
                 tuple(schemas.items()) if schemas else None)
    if cache_key not in _UPSERTS:
        stmt = _upsert_statement(dialect)
        found = None
        if stmt is not None:
            compiled = stmt.compile(dialect=dialect, schema_translate_map=schemas,
                                    render_schema_translate=bool(schemas))
            names = compiled.positiontup if compiled.positional else None
            found = _Upsert(compiled.string, None if names is None
                            else tuple(_COLUMNS.index(n) for n in names))
        _UPSERTS[cache_key] = found
    return _UPSERTS[cache_key]


def write_many(conn: Connection, rows: Sequence[ShadowTuple]) -> None:
    """Write shadow rows; existing ones (same table and row key) are replaced.

    One executemany of the dialect's upsert, sent as the driver's SQL: the
    shadow's columns are plain text and numbers, so the per-row parameter
    processing of a Core statement would only cost time (a page of a pull
    writes a shadow row per row).  On a dialect without an upsert, a delete
    of the old rows and an insert.
    """
    if not rows:
        return
    upsert = _upsert(conn)
    encode = _state_text
    if upsert is None:
        conn.execute(_delete_one, [{"t": r[0], "k": r[1]} for r in rows])
        conn.execute(insert(shadow), [
            {"table_name": r[0], "row_key": r[1], "server_key": r[2], "version": r[3],
             "state": encode(r[4]), "synced_at": r[5]} for r in rows])
        return
    if upsert.positions is None:
        params: list[Any] = [
            {"table_name": r[0], "row_key": r[1], "server_key": r[2], "version": r[3],
             "state": encode(r[4]), "synced_at": r[5]} for r in rows]
    elif upsert.positions == (0, 1, 2, 3, 4, 5):
        params = [(r[0], r[1], r[2], r[3], encode(r[4]), r[5]) for r in rows]
    else:
        params = []
        for r in rows:
            row = (r[0], r[1], r[2], r[3], encode(r[4]), r[5])
            params.append(tuple(row[i] for i in upsert.positions))
    conn.exec_driver_sql(upsert.sql, params)


def upsert_many(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write shadow rows given as dicts with table_name, row_key, server_key,
    version, state (a JSON-ready value) and synced_at; see :func:`write_many`."""
    write_many(conn, [(r["table_name"], r["row_key"], r["server_key"], r["version"],
                       r.get("state"), r["synced_at"]) for r in rows])


def _make_state_text() -> Callable[[Any], str | None]:
    """JSON text of a state, as :func:`~sqla_sync.codec.dumps` writes it.

    CPython's C encoder, called directly, writes a row in half the time
    ``JSONEncoder.encode`` takes (that builds a new one per call); where it is
    not there, or writes anything else, ``dumps`` it is.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    fast: Any = None
    if make is not None:
        try:
            fast = make(None, json.JSONEncoder().default, json.encoder.encode_basestring, None,
                        ":", ",", False, False, False)
            sample = {"a": [1, 2.5, None, True], "é": "x\n\"y\""}
            if "".join(fast(sample, 0)) != dumps(sample):
                fast = None
        except Exception:  # another interpreter's signature: the plain path
            fast = None

    if fast is None:
        def plain(state: Any) -> str | None:
            return None if state is None else dumps(state)
        return plain

    def quick(state: Any) -> str | None:
        return None if state is None else "".join(fast(state, 0))
    return quick


_state_text = _make_state_text()


def delete_many(conn: Connection, table_name: str, keys: Iterable[str]) -> None:
    """Forget the shadow of rows that no longer exist on the server."""
    params = [{"t": table_name, "k": k} for k in keys]
    if params:
        conn.execute(_delete_one, params)


def rekey(conn: Connection, table_name: str, old: str, new: str) -> None:
    """Move a shadow row to a new row key (a server-assigned id)."""
    conn.execute(delete(shadow).where(shadow.c.table_name == table_name,
                                      shadow.c.row_key == new))
    conn.execute(
        update(shadow)
        .where(shadow.c.table_name == table_name, shadow.c.row_key == old)
        .values(row_key=new, server_key=new)
    )
