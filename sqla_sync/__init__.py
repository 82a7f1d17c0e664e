"""sqla_sync: offline-first sync for SQLAlchemy.

An application writes through the ordinary ORM; every change of a
:class:`Syncable` model is captured, in the same transaction, into an outbox
that a sync engine pushes to an existing REST API through declared routes.
"""

import logging

from .capture import suppress_capture, track, untrack
from .config import Leader, Observability, Schedule, SyncConfig
from .conflicts import Conflict, Conflicts
from .engine import SyncEngine, SyncResult, start_sync
from .errors import (
    AuthRequiredError,
    ConfigurationError,
    ForbiddenRedirectError,
    ReadOnlyTableError,
    ResponseError,
    RouteError,
    SyncError,
    TransportError,
    UnsupportedDialectError,
    UnsupportedStatementError,
    UntrackedSessionError,
)
from .mixin import Syncable
from .outbox import DeadLetter
from .pull import PullError, PullResult
from .push import PushResult
from .retry import Errors
from .routes import (
    BodyCursor,
    Cursor,
    NextLink,
    Offset,
    PageNumber,
    Pull,
    Push,
    Request,
    Routes,
    RouteTable,
    define_routes,
)
from .tables import create_tables, drop_tables
from .transport import Auth, AuthFailure

__all__ = [
    "Auth",
    "AuthFailure",
    "AuthRequiredError",
    "BodyCursor",
    "ConfigurationError",
    "Conflict",
    "Conflicts",
    "Cursor",
    "DeadLetter",
    "Errors",
    "ForbiddenRedirectError",
    "Leader",
    "NextLink",
    "Observability",
    "Offset",
    "PageNumber",
    "Pull",
    "PullError",
    "PullResult",
    "Push",
    "PushResult",
    "ReadOnlyTableError",
    "Request",
    "ResponseError",
    "RouteError",
    "RouteTable",
    "Routes",
    "Schedule",
    "SyncConfig",
    "SyncEngine",
    "SyncError",
    "SyncResult",
    "Syncable",
    "TransportError",
    "UnsupportedDialectError",
    "UnsupportedStatementError",
    "UntrackedSessionError",
    "create_tables",
    "define_routes",
    "drop_tables",
    "start_sync",
    "suppress_capture",
    "track",
    "untrack",
]

# A library logs and lets the application decide where it goes (as urllib3 does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
