"""sqla_sync: offline-first sync for SQLAlchemy.

An application writes through the ordinary ORM; every change of a
:class:`Syncable` model is captured, in the same transaction, into an outbox
that a sync engine pushes to an existing REST API.
"""

from .capture import suppress_capture, track, untrack
from .errors import (
    ConfigurationError,
    ReadOnlyTableError,
    SyncError,
    UnsupportedDialectError,
    UnsupportedStatementError,
    UntrackedSessionError,
)
from .mixin import Syncable
from .tables import create_tables, drop_tables

__all__ = [
    "ConfigurationError",
    "ReadOnlyTableError",
    "SyncError",
    "Syncable",
    "UnsupportedDialectError",
    "UnsupportedStatementError",
    "UntrackedSessionError",
    "create_tables",
    "drop_tables",
    "suppress_capture",
    "track",
    "untrack",
]
