"""How the outbox read side scales: queue depth, oldest age and the next ops, with 1M pending.

Creates the sync tables, bulk-loads 1,000,000 pending ops (plus 100 dead
letters ahead of them, which must not count; ``--dead`` sets how many),
then times :func:`~sqla_sync.outbox.queue_depth`,
:func:`~sqla_sync.outbox.oldest_pending_age` and
:func:`~sqla_sync.outbox.pending_ops` (limit 100): median of 7 calls each.

SQLite (a file in a temp dir) runs by default; ``--url`` adds a server, e.g.::

    python benchmarks/queue_depth.py --url sqlite \\
        --url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --url mysql+pymysql://root@127.0.0.1:3306/test

On a server the tables go into a schema of their own (``--schema``, default
``sqla_sync_bench``; a database on MariaDB), so that tests running against the
same database are not disturbed; the tables and the schema are dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, insert, text
from sqlalchemy.engine import Connection, Dialect

from sqla_sync import create_tables, drop_tables
from sqla_sync.outbox import oldest_pending_age, pending_ops, queue_depth
from sqla_sync.tables import counters, outbox

GOAL_MS = 50.0
REPEATS = 7
CHUNK = 20_000
DEAD = 100


@contextmanager
def bench_engine(url: str, schema: str) -> Iterator[Engine]:
    """An engine with fresh sync tables; everything it created is removed afterwards."""
    if url == "sqlite":
        with tempfile.TemporaryDirectory(prefix="sqla_sync_qd_") as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'queue.db'}")
            create_tables(engine)
            try:
                yield engine
            finally:
                engine.dispose()
        return
    server = create_engine(url)
    keyword = "DATABASE" if server.dialect.name in ("mysql", "mariadb") else "SCHEMA"
    quoted = server.dialect.identifier_preparer.quote(schema)
    if schema:
        with server.begin() as conn:
            conn.execute(text(f"CREATE {keyword} IF NOT EXISTS {quoted}"))
        engine = server.execution_options(schema_translate_map={None: schema})
    else:
        engine = server
    drop_tables(engine)  # leftovers of an interrupted run
    create_tables(engine)
    try:
        yield engine
    finally:
        drop_tables(engine)
        if schema:
            with server.begin() as conn:
                conn.execute(text(f"DROP {keyword} IF EXISTS {quoted}"))
        server.dispose()


def op_rows(start: int, stop: int, status: str, first_at: float) -> list[dict[str, Any]]:
    """Outbox rows ``start..stop-1``, the i-th captured at ``first_at + i`` milliseconds."""
    rows = []
    for i in range(start, stop):
        at = first_at + i * 0.001
        rows.append(
            {
                "table_name": "posts",
                "row_key": f'["{uuid.uuid4().hex}"]',
                "lane": 0,
                "op": "insert",
                "changed": 3,
                "state": None,
                "changed_at": at,
                "created_at": at,
                "status": status,
                "attempts": 0 if status == "pending" else 5,
                "next_attempt_at": 0.0,
            }
        )
    return rows


def load(engine: Engine, pending: int, now: float, vacuum: bool, dead: int = DEAD) -> float:
    """Bulk-load the ops with Core executemany; returns the seconds it took.

    On PostgreSQL the executemany asks for the ids back, so that SQLAlchemy
    sends 1,000 rows per INSERT: the outbox's statement triggers, which keep
    the queue depth, then run once per 1,000 rows instead of once per row.
    """
    started = time.perf_counter()
    stmt: Any = insert(outbox)
    if engine.dialect.name == "postgresql":
        stmt = stmt.returning(outbox.c.id)
    first_at = now - pending * 0.001
    with engine.begin() as conn:
        # Dead letters first (lower ids, older): reads must skip them, not stop at them.
        for start in range(0, dead, CHUNK):
            conn.execute(stmt, op_rows(start, min(start + CHUNK, dead), "dead",
                                       first_at - 3600.0))
        for start in range(0, pending, CHUNK):
            conn.execute(stmt, op_rows(start, min(start + CHUNK, pending), "pending", first_at))
    with engine.connect() as conn:
        analyze(conn.execution_options(isolation_level="AUTOCOMMIT"), vacuum)
    return time.perf_counter() - started


def analyze(conn: Connection, vacuum: bool) -> None:
    """Fresh planner statistics, as a database that has been running would have.

    With ``vacuum`` PostgreSQL also gets the visibility map autovacuum would
    eventually set, which index-only scans need.
    """
    name = conn.dialect.name
    if name in ("mysql", "mariadb"):
        conn.execute(text(f"ANALYZE TABLE {_qualified(conn)}"))
    elif name == "postgresql" and vacuum:
        conn.execute(text(f"VACUUM ANALYZE {_qualified(conn)}"))
    else:
        conn.execute(text(f"ANALYZE {_qualified(conn)}"))


def _is_mariadb(dialect: Dialect) -> bool:
    return bool(getattr(dialect, "is_mariadb", False))


def explain(conn: Connection) -> str:
    """The plan of queue_depth's query (executed, where the dialect can): a
    count of the outbox on SQLite, the sum of the counter rows elsewhere."""
    name = conn.dialect.name
    if name == "sqlite":
        table = _qualified(conn)
        sql = (f"SELECT (SELECT count(*) FROM {table}) - "
               f"(SELECT count(*) FROM {table} WHERE status = 'dead')")
    else:
        sql = f"SELECT sum(pending) FROM {_qualified(conn, counters)}"
    if name == "sqlite":
        sql = f"EXPLAIN QUERY PLAN {sql}"
    elif name == "postgresql":
        sql = f"EXPLAIN (ANALYZE, BUFFERS) {sql}"
    else:
        sql = f"ANALYZE {sql}" if _is_mariadb(conn.dialect) else f"EXPLAIN {sql}"
    return "\n".join("    " + " | ".join(str(v) for v in row) for row in conn.execute(text(sql)))


def _qualified(conn: Connection, table: Table = outbox) -> str:
    preparer = conn.dialect.identifier_preparer
    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)
    name = preparer.quote(table.name)
    return f"{preparer.quote(schema)}.{name}" if schema else name


def median_ms(conn: Connection, call: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def run(url: str, schema: str, pending: int, vacuum: bool, show_plan: bool,
        dead: int = DEAD) -> bool:
    now = time.time()
    with bench_engine(url, schema) as engine:
        label = "mariadb" if _is_mariadb(engine.dialect) else engine.dialect.name
        seconds = load(engine, pending, now, vacuum, dead)
        print(f"[{label}] loaded {pending:,} pending + {dead:,} dead ops in {seconds:.1f} s")
        with engine.connect() as conn:
            # Right answers first: a fast wrong count is worth nothing.
            assert queue_depth(conn) == pending, queue_depth(conn)
            ops = pending_ops(conn, limit=100)
            assert len(ops) == 100 and all(op.status == "pending" for op in ops)
            assert [op.id for op in ops] == sorted(op.id for op in ops)
            age = oldest_pending_age(conn, now)
            assert age is not None and abs(age - pending * 0.001) < 1.0, age

            if show_plan:
                print(f"[{label}] plan of queue_depth:\n{explain(conn)}")
            figures = {
                "queue_depth": median_ms(conn, lambda: queue_depth(conn)),
                "oldest_pending_age": median_ms(conn, lambda: oldest_pending_age(conn, now)),
                "pending_ops(limit=100)": median_ms(conn, lambda: pending_ops(conn, limit=100)),
            }
    ok = True
    for name, ms in figures.items():
        ok &= ms < GOAL_MS
        print(
            f"[{label}] {name} with {pending:,} pending: {ms:.1f} ms "
            f"(goal < {GOAL_MS:.0f} ms, median of {REPEATS})"
        )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        action="append",
        help="database URL, or 'sqlite' for a temp file (repeatable; default: sqlite)",
    )
    parser.add_argument("--schema", default="sqla_sync_bench", help="server schema; '' for none")
    parser.add_argument("--rows", type=int, default=1_000_000, help="pending ops to load")
    parser.add_argument(
        "--vacuum", action="store_true", help="PostgreSQL: VACUUM ANALYZE after the load"
    )
    parser.add_argument("--explain", action="store_true", help="print queue_depth's plan")
    parser.add_argument("--dead", type=int, default=DEAD,
                        help="dead letters, loaded ahead of the pending ops (older, lower ids)")
    args = parser.parse_args(argv)
    ok = True
    for url in args.url or ["sqlite"]:
        ok &= run(url, args.schema, args.rows, args.vacuum, args.explain, args.dead)
    print(f"goal: every read < {GOAL_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
