"""The library's write transactions, as real transactions on SQLite too.

pysqlite -- the standard library's ``sqlite3``, SQLAlchemy's default SQLite
driver -- does not emit ``BEGIN`` when SQLAlchemy begins a transaction.  It
begins one (deferred) just before the first INSERT, UPDATE or DELETE, so
what a transaction reads before its first write runs in autocommit, outside
it: the lease fence, the local rows and pending ops a pull decides on.  An
application commit can land between those reads and the writes they decide,
and a ``SAVEPOINT`` issued before the first write starts a transaction of its
own that its ``RELEASE`` commits.  Applications that switch the driver's
handling off (SQLAlchemy's "serializable isolation / savepoints" recipe:
``isolation_level = None`` on connect, ``BEGIN`` on ``begin``) get deferred
transactions instead, whose read lock SQLite refuses to upgrade to a write
lock while another connection writes (``SQLITE_BUSY`` at once, no waiting).

:func:`begin_write` is therefore the first statement of every transaction
in which the library writes sync state (the engine calls it before the lease
fence): on SQLite it issues ``BEGIN IMMEDIATE``, which takes the write lock
up front -- waiting for it through the driver's busy timeout -- and holds it
to the commit, so the transaction's reads and writes are one transaction and
no lock is ever upgraded.  The library never does HTTP inside one, so the lock
is held for milliseconds.  Only the library's own transactions are touched:
the application's engine, its connections' settings and its own transactions
stay as they are.  Other databases need nothing here: their transactions
begin with the first statement, and the fence locks the lease row.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

__all__ = ["begin_write"]

#: SQLAlchemy drivers that are the standard library's sqlite3 (or a build of it).
_PYSQLITE_DRIVERS = frozenset({"pysqlite", "pysqlcipher"})


def begin_write(conn: Connection) -> None:
    """Make ``conn``'s transaction a write transaction from its first statement.

    Call it first thing after ``begin()``, before any other statement of the
    transaction.  On SQLite (pysqlite) it issues ``BEGIN IMMEDIATE``; when the
    application's ``begin`` listener has already issued a plain ``BEGIN``
    (the recipe: the driver's handling off, nothing has run in it yet), that
    empty transaction is ended first.  Elsewhere it does nothing.
    """
    dialect = conn.dialect
    if dialect.name != "sqlite" or dialect.driver not in _PYSQLITE_DRIVERS:
        return
    dbapi = conn.connection.dbapi_connection
    in_transaction = getattr(dbapi, "in_transaction", None)
    if in_transaction is None:
        return
    if in_transaction:
        if getattr(dbapi, "isolation_level", "") is not None:
            # The driver's own handling is on, yet a transaction is open: the
            # connection is shared with one in progress (a StaticPool).  Not ours
            # to end; the statements run in it, as they would have anyway.
            return
        conn.exec_driver_sql("COMMIT")  # the application's BEGIN on begin: still empty
    conn.exec_driver_sql("BEGIN IMMEDIATE")
