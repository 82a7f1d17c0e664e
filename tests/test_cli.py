"""The ``sqla-sync`` command, run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from examples.server.run import BackendServer
from sqla_sync import track
from sqla_sync.outbox import dead_letter_count, queue_depth
from tests.conftest import reset_schema
from tests.models import Article, Base

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("sqla-sync")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sqla_sync.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    reset_schema(engine, Base.metadata)
    maker = track(sessionmaker(engine))
    with maker() as s:
        s.add_all([Article(id="a1", title="one"), Article(id="a2", title="two")])
        s.commit()
    engine.dispose()
    return url


def test_status_for_people_and_machines(url: str) -> None:
    people = cli("--url", url, "status")
    assert people.returncode == 0, people.stderr
    assert "queue depth" in people.stdout and " 2" in people.stdout
    machines = cli("status", "--json", env={"SQLA_SYNC_URL": url})
    data = json.loads(machines.stdout)
    assert (data["queue_depth"], data["dead_letters"], data["last_sync_at"]) == (2, 0, None)


def test_dead_letters_and_retry(url: str) -> None:
    with BackendServer() as server:
        server.faults.add(method="POST", path="/api/posts", action="status", status=400,
                          times=1)
        env = {"SQLA_SYNC_TEST_SERVER": server.url}
        command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sqla_sync.cli"]
        run = subprocess.Popen(
            [*command, "--url", url, "run", "tests.workers:config"],
            cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
        engine = create_engine(url)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until the run has pushed what it can
                with engine.connect() as conn:
                    if queue_depth(conn) == 0 and dead_letter_count(conn) == 1:
                        break
                time.sleep(0.05)
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=30) == 0
        finally:
            engine.dispose()
            if run.poll() is None:
                run.kill()
        assert "stopped" in (run.stderr.read() if run.stderr else "")
        listing = cli("--url", url, "dead-letters", "--json")
        [letter] = json.loads(listing.stdout)
        assert letter["status"] == 400
        assert "400" in cli("--url", url, "dead-letters").stdout
        retried = cli("--url", url, "retry", str(letter["id"]))
        assert retried.returncode == 0 and "back in the queue" in retried.stdout
        again = cli("--url", url, "retry", str(letter["id"]))
        assert again.returncode == 1 and "no dead letter" in again.stderr
        status = json.loads(cli("--url", url, "status", "--json").stdout)
        assert status["queue_depth"] == 1 and status["last_sync_at"] is not None
        assert [lease["live"] for lease in status["leaders"]] == [False]  # released on stop


def test_usage_and_errors_have_exit_codes(tmp_path: Path) -> None:
    assert cli("status").returncode == 2  # no database named
    assert cli("--url", "sqlite:///x.db", "frobnicate").returncode == 2
    empty = cli("--url", f"sqlite:///{tmp_path / 'empty.db'}", "status")
    assert empty.returncode == 1 and "no sqla_sync tables" in empty.stderr
    bad = cli("--url", f"sqlite:///{tmp_path / 'empty.db'}", "run", "nomodule")
    assert bad.returncode == 1


def test_demo_runs_and_leaves_nothing_behind() -> None:
    done = cli("demo")
    assert done.returncode == 0, done.stderr
    for step in ("queue depth: 3", "pushed 3", "policy merge -> merged", "pulled 1",
                 "every step did what it says"):
        assert step in done.stdout
