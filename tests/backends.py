"""The reference backends a test can run against, behind one interface.

``"flask"`` is :class:`examples.server.run.BackendServer` (Flask on a small threaded
HTTP/1.1 server), ``"fastapi"`` is :class:`examples.fastapi_backend.FastAPIBackendServer`
(FastAPI on uvicorn). Both serve the same contract (:class:`examples.server.api.Api` over
:class:`examples.server.store.Store`), take the same options and have the same
attributes, described by :class:`Backend`. To run a test against both, parametrize a
fixture over :data:`BACKEND_NAMES` and start servers with :func:`start_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from examples.fastapi_backend import FastAPIBackendServer
from examples.server import BackendServer
from examples.server.faults import Faults
from examples.server.store import Store


class Backend(Protocol):
    """What a test may use of a running backend (both server classes provide it)."""

    url: str
    host: str
    port: int
    store: Store
    faults: Faults

    def reset(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class BackendSpec:
    """One backend: how to start it in-process and its ``python -m`` module."""

    name: str
    server: Callable[..., Backend]
    module: str


BACKENDS: dict[str, BackendSpec] = {
    "flask": BackendSpec("flask", BackendServer, "examples.server"),
    "fastapi": BackendSpec("fastapi", FastAPIBackendServer, "examples.fastapi_backend"),
}
#: Fixture params: ``@pytest.fixture(params=BACKEND_NAMES)``.
BACKEND_NAMES: list[str] = list(BACKENDS)


def start_backend(name: str, **options: Any) -> Backend:
    """Start backend ``name`` on 127.0.0.1 (any free port) with the store ``options``."""
    return BACKENDS[name].server(**options)
