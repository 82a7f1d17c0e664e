"""The reference REST backend on FastAPI + uvicorn, sharing the Flask backend's contract.

Routing, auth, Idempotency-Key replay, If-Match, paging, the request log and the fault
switch all live in :mod:`examples.server` (:class:`~examples.server.api.Api`,
:class:`~examples.server.store.Store` — SQLAlchemy on SQLite —,
:class:`~examples.server.faults.Faults`); this package only translates ASGI to and from
it. Start it in-process with :class:`FastAPIBackendServer` or as a separate process with
``python -m examples.fastapi_backend --port 0`` (same flags as ``examples.server``).
"""

from .app import TRANSPORT_EXTENSION, ApiAnswer, backend_of, create_app
from .run import FastAPIBackendServer, TransportH11Protocol

__all__ = [
    "TRANSPORT_EXTENSION",
    "ApiAnswer",
    "FastAPIBackendServer",
    "TransportH11Protocol",
    "backend_of",
    "create_app",
]
