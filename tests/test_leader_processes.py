"""Three OS processes share one database: exactly one pushes; a killed leader is replaced.

Runs on one SQLite file and on PostgreSQL (several hosts would share it the
same way).  Each worker is ``sqla-sync run tests.workers:config``; its
requests carry ``X-Worker`` so the server's log shows who pushed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from examples.server.run import BackendServer
from sqla_sync import track, untrack
from sqla_sync.tables import leases
from tests.models import Article

ROOT = Path(__file__).resolve().parent.parent
TTL = 1.5


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lease(engine: Engine) -> tuple[str | None, int | None]:
    with engine.connect() as conn:
        row = conn.execute(select(leases.c.owner, leases.c.token)).first()
    return (None, None) if row is None else (row.owner, row.token)


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"], indirect=True)
def test_one_leader_among_three_processes(engine: Engine, tmp_path: Path) -> None:
    url = engine.url.render_as_string(hide_password=False)
    maker = track(sessionmaker(engine))
    server = BackendServer()
    workers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in ("w1", "w2", "w3"):
            env = {**os.environ, "SQLA_SYNC_TEST_SERVER": server.url,
                   "SQLA_SYNC_TEST_WORKER": name, "SQLA_SYNC_TEST_TTL": str(TTL)}
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "sqla_sync.cli", "--url", url, "run",
                 "tests.workers:config"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)

        written: list[str] = []

        def write(n: int) -> None:
            with maker() as s:
                for _ in range(n):
                    ident = f"row-{len(written):03}"
                    s.add(Article(id=ident, title=ident))
                    written.append(ident)
                s.commit()

        def arrived() -> set[str]:
            return {r["id"] for r in server.store.rows("posts")}

        for _ in range(10):
            write(3)
            time.sleep(0.05)
        wait_for(lambda: arrived() == set(written), 30, "the first rows to arrive")
        senders = {r["headers"].get("X-Worker") for r in server.store.requests()}
        assert len(senders) == 1, f"more than one process pushed: {senders}"
        [leader] = senders
        owner, token = lease(engine)
        assert owner is not None and token == 1

        workers[leader].send_signal(signal.SIGKILL)
        workers[leader].wait(10)
        server.store.clear_requests()
        for _ in range(10):  # the application keeps writing
            write(3)
            time.sleep(0.05)
        wait_for(lambda: lease(engine)[1] == 2, TTL + TTL / 3 + 5, "another process to lead")
        wait_for(lambda: arrived() == set(written), 30, "every row to arrive")
        new_senders = {r["headers"].get("X-Worker") for r in server.store.requests()}
        assert len(new_senders) == 1 and leader not in new_senders
        # Every change reached the server once: one row per id, one applied POST per id.
        posts = Counter(r["body"]["id"] for r in server.store.requests("POST")
                        if not r.get("replayed") and r["status"] == 201)
        assert all(count == 1 for count in posts.values())
        assert sorted(arrived()) == sorted(written)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in workers.items():
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code not in (0, -signal.SIGKILL):
                output = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"{name} exited {code}: {output}")
        server.stop()
        untrack(maker)
