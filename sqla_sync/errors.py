"""The exception family of sqla_sync.

Every error the library raises derives from :class:`SyncError`, so an
application can catch one type.  Messages say what was wrong and what to do;
causes are chained with ``raise ... from``.  No message ever carries a secret
header value.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ReadOnlyTableError",
    "SyncError",
    "UnsupportedDialectError",
    "UnsupportedStatementError",
    "UntrackedSessionError",
]


class SyncError(Exception):
    """Root of every exception raised by sqla_sync."""


class ConfigurationError(SyncError):
    """A route, model or configuration value is wrong; raised when it is defined."""


class UntrackedSessionError(SyncError):
    """A synced model was written through a session that :func:`track` never saw.

    Raised at flush so that a change is never silently left out of the outbox.
    """


class UnsupportedStatementError(SyncError):
    """An ORM statement writes a synced model in a way capture cannot record."""


class UnsupportedDialectError(SyncError):
    """The database dialect has no outbox support (SQLite, PostgreSQL, MySQL/MariaDB do)."""


class ReadOnlyTableError(SyncError):
    """A local write to a table whose routes only pull from the server."""
