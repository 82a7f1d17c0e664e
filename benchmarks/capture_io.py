"""Where small transactions spend capture's time: the outbox's indexes at commit.

Writes 10 ops per transaction, 2,000 transactions, straight through
``sqlite3`` (no ORM, no SQLAlchemy) to a SQLite file with default pragmas
(rollback journal, ``synchronous=FULL``), in four variants:

* ``outbox``: capture's own upsert into ``sqla_sync_outbox`` with its
  indexes as :func:`sqla_sync.create_tables` makes them: the unique
  ``(table_name, row_key, lane)`` one compaction needs, and ``(status, id)``,
  which on SQLite holds the dead letters only;
* ``full-status-index``: the same with ``(status, id)`` over every op, as
  before revision a1f0c0de0003;
* ``no-unique-index``: a plain INSERT into the outbox without the unique
  index (no compaction possible);
* ``yardstick``: an INSERT into an index-free table, with the row as JSON, as
  the yardstick of ``benchmarks/capture.py`` writes.

Row keys are random (uuid4), as in ``capture.py``: each commit then writes
about one page per op of a unique index to the journal and to the file.
Prints microseconds per transaction (median of 3 rounds, variants taking
turns), each variant's ratio to the yardstick, and the bytes the process
hands to ``write()`` per transaction (``wchar`` of ``/proc/self/io``, Linux):
a figure that, unlike time, does not depend on the machine's load.

Run: ``python benchmarks/capture_io.py [--transactions 2000]``
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from sqla_sync import create_tables
from sqla_sync.capture import _driver_upsert

OPS_PER_TRANSACTION = 10
ROUNDS = 3
VARIANTS = ("outbox", "full-status-index", "no-unique-index", "yardstick")
_IO = Path("/proc/self/io")

_INSERT = ("INSERT INTO sqla_sync_outbox (table_name, row_key, op, changed, state, "
           "changed_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
_YARD = "INSERT INTO yard (table_name, row_key, op, state, changed_at) VALUES (?, ?, ?, ?, ?)"


def op_row() -> tuple[Any, ...]:
    return ("posts", f'["{uuid.uuid4().hex}"]', "insert", 7, None, 1.0, 1.0)


def yard_row() -> tuple[Any, ...]:
    key = uuid.uuid4().hex
    return ("posts", f'["{key}"]', "insert", f'{{"id": "{key}", "title": "t", "body": ""}}', 1.0)


def prepare(path: Path, variant: str) -> tuple[sqlite3.Connection, str, Callable[[], Any]]:
    """A fresh database file for ``variant``: its connection, statement and row maker."""
    engine = create_engine(f"sqlite:///{path}")
    create_tables(engine)
    upsert, _ = _driver_upsert(engine.dialect, None)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE yard (id INTEGER PRIMARY KEY, table_name VARCHAR(64), "
                 "row_key VARCHAR(500), op VARCHAR(8), state TEXT, changed_at FLOAT)")
    if variant == "full-status-index":
        conn.execute("DROP INDEX ix_sqla_sync_outbox_status_id")
        conn.execute("CREATE INDEX ix_sqla_sync_outbox_status_id "
                     "ON sqla_sync_outbox (status, id)")
    if variant == "no-unique-index":
        conn.execute("DROP INDEX ix_sqla_sync_outbox_table_name_row_key_lane")
        return conn, _INSERT, op_row
    if variant == "yardstick":
        return conn, _YARD, yard_row
    return conn, upsert, op_row


def written() -> int | None:
    """Bytes this process has handed to ``write()`` so far (None off Linux)."""
    try:
        text = _IO.read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in text.splitlines()
                if line.startswith("wchar:"))


def run(directory: Path, variant: str, name: str, transactions: int
        ) -> tuple[float, float | None]:
    """Microseconds and bytes written per transaction of one variant on a fresh file."""
    conn, sql, make = prepare(directory / f"{name}.db", variant)
    try:
        before = written()
        started = time.perf_counter()
        for _ in range(transactions):
            rows = [make() for _ in range(OPS_PER_TRANSACTION)]
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        elapsed = (time.perf_counter() - started) / transactions * 1e6
        after = written()
        wrote = None if before is None or after is None else (after - before) / transactions
        return elapsed, wrote
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=2000)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wrote: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="sqla_sync_io_") as tmp:
        for round_ in range(ROUNDS):
            for variant in VARIANTS:
                elapsed, nbytes = run(Path(tmp), variant, f"{variant}-{round_}",
                                      args.transactions)
                times[variant].append(elapsed)
                if nbytes is not None:
                    wrote[variant].append(nbytes)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    for variant in VARIANTS:
        io = (f", {statistics.median(wrote[variant]) / 1024:.0f} KiB written"
              if wrote[variant] else "")
        print(f"capture io {variant}: {med[variant]:.0f} us per transaction of "
              f"{OPS_PER_TRANSACTION} ops = {med[variant] / med['yardstick']:.2f}x the "
              f"yardstick's table (median of {ROUNDS}){io}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
