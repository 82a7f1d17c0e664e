"""Configuration values of :func:`~sqla_sync.start_sync`.

Each is a frozen dataclass: keyword arguments with documented defaults,
immutable, changed by copying (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from .conflicts import Conflicts
from .errors import ConfigurationError
from .retry import Errors
from .routes import Routes, RouteTable, define_routes
from .transport import Auth

__all__ = ["Leader", "Observability", "Schedule", "SyncConfig"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When and how much to sync.

    :param interval: seconds between background syncs (0 disables the timer).
    :param on_online: sync as soon as the server answers again.
    :param on_commit: push shortly after a committed local change.
    :param push_batch_size: ops claimed and recorded per transaction.
    :param push_concurrency: requests in flight at once (threads).
    :param pull_page_size: rows asked for per page.
    :param pull_max_pages: pages per table per pull; the next pull continues.
    """

    interval: float = 30.0
    on_online: bool = True
    on_commit: bool = True
    push_batch_size: int = 10
    push_concurrency: int = 3
    pull_page_size: int = 100
    pull_max_pages: int = 10

    def __post_init__(self) -> None:
        if self.push_batch_size < 1 or self.push_concurrency < 1:
            raise ConfigurationError("push_batch_size and push_concurrency must be >= 1")
        if self.pull_page_size < 1 or self.pull_max_pages < 1:
            raise ConfigurationError("pull_page_size and pull_max_pages must be >= 1")


@dataclasses.dataclass(frozen=True)
class Observability:
    """Metrics reporting: ``on_metrics(snapshot)`` every ``metrics_interval`` seconds."""

    enabled: bool = True
    metrics_interval: float = 30.0
    on_metrics: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Leader:
    """Leader election: one process syncs; the lease lasts ``ttl`` seconds and is
    renewed every ``ttl / 3`` -- between syncs, and during a sync by a heartbeat
    thread, so that a sync longer than ``ttl`` keeps its lease."""

    ttl: float = 15.0
    enabled: bool = True
    name: str = "default"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """Everything :func:`~sqla_sync.start_sync` needs.

    :param base_url: the server's origin (and optional path prefix); requests
        never leave this origin.
    :param routes: the result of :func:`~sqla_sync.define_routes` (a plain
        mapping of :class:`Routes` is checked the same way).
    :param timeout: (connect, read) seconds for every request: to connect, and
        between two reads of the answer.
    :param deadline: seconds one request may take in all, from sending it to the
        last byte of its answer, redirects included (a server that drips its
        answer cannot hold a sync longer); by default connect + read timeout.
        Raise it for very large pages on slow links.
    :param max_response_bytes: larger answers are refused.
    :param clock: wall-clock time in epoch seconds; tests inject their own.
    :param seed: seed of the backoff jitter, for reproducible runs.
    :param http: a preconfigured :class:`requests.Session` (proxies, CA bundle),
        used as it is.  Without one, the engine's own session takes the
        environment's proxies (``HTTP_PROXY``, ``NO_PROXY``, ...), CA bundle
        (``REQUESTS_CA_BUNDLE``) and ``.netrc`` entry for ``base_url`` once, at
        :func:`start_sync`, rather than on every request.
    """

    base_url: str
    routes: RouteTable | Mapping[str, Routes]
    auth: Auth | None = None
    sync: Schedule = dataclasses.field(default_factory=Schedule)
    conflicts: Conflicts = dataclasses.field(default_factory=Conflicts)
    errors: Errors = dataclasses.field(default_factory=Errors)
    observability: Observability = dataclasses.field(default_factory=Observability)
    leader: Leader = dataclasses.field(default_factory=Leader)
    timeout: tuple[float, float] = (5.0, 30.0)
    deadline: float | None = None
    max_response_bytes: int = 16 * 2**20
    clock: Callable[[], float] = time.time
    seed: int | None = None
    http: requests.Session | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None and not self.deadline > 0:
            raise ConfigurationError(
                f"SyncConfig(deadline={self.deadline!r}) must be seconds > 0, or None for "
                "connect + read timeout"
            )

    def route_table(self) -> RouteTable:
        """The routes, checked against the synced models."""
        if isinstance(self.routes, RouteTable):
            return self.routes
        return define_routes(self.routes)
