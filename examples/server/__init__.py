"""Reference REST backend for sqla_sync's tests and benchmarks.

It plays "the existing REST API" an offline-first client syncs with: ``posts`` and
``comments`` with ``updatedAt``/``version``/tombstones, delta listing with several paging
styles, Idempotency-Key replay, If-Match, bearer auth, and a fault switch that makes the
failures real networks produce. Start it in-process with :class:`BackendServer` or as a
separate process with ``python -m examples.server --port 0``.
"""

from .api import Api, ApiRequest, ApiResponse
from .faults import FaultAction, Faults
from .flask_app import backend_of, create_app
from .run import BackendServer
from .store import Store

__all__ = [
    "Api",
    "ApiRequest",
    "ApiResponse",
    "BackendServer",
    "FaultAction",
    "Faults",
    "Store",
    "backend_of",
    "create_app",
]
