"""The exception family of sqla_sync.

Every error the library raises derives from :class:`SyncError`, so an
application can catch one type.  Messages say what was wrong and what to do;
causes are chained with ``raise ... from``.  No message ever carries a secret
header value.
"""

from __future__ import annotations

__all__ = [
    "AuthRequiredError",
    "ConfigurationError",
    "ForbiddenRedirectError",
    "ReadOnlyTableError",
    "ResponseError",
    "RouteError",
    "SyncError",
    "TransportError",
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


class RouteError(SyncError):
    """A route cannot build a request for a row (a missing field, a forbidden id)."""


class TransportError(SyncError):
    """The request did not get a usable answer: connection error, timeout, garbage.

    Retried with backoff.  ``status`` is the HTTP status when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResponseError(SyncError):
    """The server answered with a status the library does not take as success."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthRequiredError(SyncError):
    """The server still refuses the credentials after ``max_auth_retries`` refreshes.

    Push pauses; pending ops stay pending until credentials work again.
    """


class ForbiddenRedirectError(SyncError):
    """A redirect or next-page link points at another origin than ``base_url``."""
