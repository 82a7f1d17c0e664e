"""The shadow table: the last known server state of each synced row.

Push writes what the server answered; pull writes what it listed.  Conflict
detection compares a pulled row with it, merge uses it as the base, and
``if_match`` routes send its version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from .codec import dumps, loads
from .tables import shadow

__all__ = ["ShadowRow", "delete_many", "get_many", "rekey", "upsert_many"]


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


def upsert_many(conn: Connection, rows: Sequence[Mapping[str, Any]],
                existing: Iterable[str] | None = None) -> None:
    """Write shadow rows (dicts with table_name, row_key, server_key, version,
    state (a JSON-ready value), synced_at); existing ones are replaced.

    :param existing: the row keys that may have a shadow already, when the
        caller knows them (the others are only inserted); None: any may.
    """
    if not rows:
        return
    if existing is None:
        old = [{"t": r["table_name"], "k": r["row_key"]} for r in rows]
    else:
        known = set(existing)
        old = [{"t": r["table_name"], "k": r["row_key"]} for r in rows if r["row_key"] in known]
    if old:
        conn.execute(_delete_one, old)
    conn.execute(
        insert(shadow),
        [
            {**r, "state": dumps(r["state"]) if r.get("state") is not None else None}
            for r in rows
        ],
    )


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
