"""A SyncConfig factory for ``sqla-sync run tests.workers:config`` in subprocess tests.

The environment says where the server is and who this worker is; every
request carries ``X-Worker`` so the server's request log shows which process
pushed what.
"""

from __future__ import annotations

import os

from sqla_sync import Leader, Push, Request, Routes, Schedule, SyncConfig, define_routes
from tests import models  # noqa: F401  (defines the synced models)


def config() -> SyncConfig:
    """The worker's configuration, from SQLA_SYNC_TEST_SERVER / _WORKER / _TTL."""
    worker = {"X-Worker": os.environ.get("SQLA_SYNC_TEST_WORKER", str(os.getpid()))}
    routes = define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts", headers=worker),
                  update=Request("PUT", "/api/posts/{id}", headers=worker),
                  delete=Request("DELETE", "/api/posts/{id}", headers=worker)))})
    ttl = float(os.environ.get("SQLA_SYNC_TEST_TTL", "1.5"))
    return SyncConfig(
        base_url=os.environ["SQLA_SYNC_TEST_SERVER"],
        routes=routes,
        sync=Schedule(interval=0.2, on_commit=False, push_concurrency=1, push_batch_size=5),
        leader=Leader(ttl=ttl),
    )
