"""The examples under ``examples/`` run as their users run them: as subprocesses.

Each example defines Syncable models whose table names (``posts``,
``comments``, ...) would collide with the test models in this process, so
none of them is imported here.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from examples.server.run import BackendServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ALEMBIC = Path(sys.executable).with_name("alembic")
SYNC_TABLES = {"sqla_sync_outbox", "sqla_sync_counters", "sqla_sync_checkpoints",
               "sqla_sync_rows", "sqla_sync_leases"}


def run(*args: str | Path, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; text output, the repository as working directory."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- the todo app ---------------------------------------------------------------------


class Todo:
    """``python -m examples.todo --db DB --server URL ...``."""

    def __init__(self, db: Path, server: str) -> None:
        self.db, self.server = db, server

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "examples.todo", "--db", self.db,
                   "--server", self.server, *args)

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def status(self) -> dict[str, str]:
        """``status`` as {"queue": "2", "dead letters": "0", "last sync": ..., "server": ...}."""
        pairs = (re.split(r"\s{2,}", line, maxsplit=1) for line in self.ok("status").splitlines())
        return {key: value for key, value in pairs}

    def ids(self) -> dict[str, tuple[str, bool]]:
        """text -> (id, done) from ``list``."""
        out: dict[str, tuple[str, bool]] = {}
        for line in self.ok("list").splitlines():
            if line.startswith("["):
                mark, _, rest = line.partition("] ")
                todo_id, _, text = rest.partition("  ")
                out[text] = (todo_id, mark == "[x")
        return out


def live(server: BackendServer) -> dict[str, dict[str, object]]:
    return {str(r["title"]): r for r in server.store.rows("posts") if not r["deleted"]}


def test_todo_app_offline_then_sync(tmp_path: Path) -> None:
    down = BackendServer()
    port, url = down.port, down.url
    down.stop()  # the server is down while the user writes
    todo = Todo(tmp_path / "todo.db", url)

    first = todo.ok("add", "buy milk")
    assert first.startswith("added ") and "buy milk" in first
    todo.ok("add", "call ada")
    status = todo.status()
    assert (status["queue"], status["dead letters"], status["last sync"]) == ("2", "0", "never")
    assert status["server"] == f"offline ({url})"

    failed = todo("sync")
    assert failed.returncode == 1  # nothing lost: the queue depth is read after the failure
    assert "does not answer" in failed.stderr and "2 change(s) kept" in failed.stderr

    server = BackendServer(port=port)
    try:
        server.store.seed("posts", [{"id": "web00001", "title": "from the web"}])
        synced = todo.ok("sync")
        assert "pulled 1, pushed 2" in synced and "queue 0" in synced
        on_server = live(server)
        assert set(on_server) == {"buy milk", "call ada", "from the web"}
        ids = todo.ids()
        assert ids["from the web"] == ("web00001", False)  # pulled
        assert {ids[t][0] for t in ("buy milk", "call ada")} == {
            str(on_server[t]["id"]) for t in ("buy milk", "call ada")}

        milk, ada = ids["buy milk"][0], ids["call ada"][0]
        assert "(1 change(s) waiting" in todo.ok("done", milk[:4])  # a unique prefix will do
        assert "(2 change(s) waiting" in todo.ok("rm", ada)
        assert "pushed 2" in todo.ok("sync")
        on_server = live(server)
        assert set(on_server) == {"buy milk", "from the web"}
        assert on_server["buy milk"]["body"] == "done"
        assert todo.ids() == {"buy milk": (milk, True), "from the web": ("web00001", False)}
        status = todo.status()
        assert (status["queue"], status["server"]) == ("0", f"online ({url})")
        assert status["last sync"] != "never"
    finally:
        server.stop()

    # The server goes away again: a new change waits, sync exits 1 and keeps it.
    todo.ok("add", "water the plants")
    failed = todo("sync")
    assert failed.returncode == 1 and "1 change(s) kept" in failed.stderr
    status = todo.status()
    assert (status["queue"], status["server"]) == ("1", f"offline ({url})")


def test_todo_app_usage_and_failures(tmp_path: Path) -> None:
    todo = Todo(tmp_path / "todo.db", "http://127.0.0.1:9")
    assert todo("frobnicate").returncode == 2
    no_server = run(sys.executable, "-m", "examples.todo", "--db", tmp_path / "todo.db", "sync",
                    env={"TODO_SERVER": ""})
    assert no_server.returncode == 2 and "--server" in no_server.stderr
    missing = todo("done", "nope")
    assert missing.returncode == 1 and "no todo" in missing.stderr


# -- parent and children with server-assigned ids -------------------------------------


def test_parent_child_script() -> None:
    done = run(sys.executable, EXAMPLES / "parent_child.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "before sync: post -1; comments -1 -> post -1, -2 -> post -1" in lines
    assert "after sync:  post 2 (version 1); comments 2 -> post 2, 3 -> post 2" in lines
    assert "server: comment 2 -> post 2 ('Trip to the coast'): 'pack a jacket'" in lines
    assert lines[-1] == "children follow the parent's server id"


# -- SQLModel ---------------------------------------------------------------------------


def test_sqlmodel_example_syncs_to_the_server() -> None:
    pytest.importorskip("sqlmodel")
    with BackendServer() as server:
        done = run(sys.executable, "-m", "examples.sqlmodel_models", "--server", server.url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "an untracked sqlmodel.Session is refused" in done.stdout
        rows = live(server)
    assert set(rows) == {"Buy milk", "Call Ada", "Written on the web"}
    assert rows["Buy milk"]["body"] == "oat" and rows["Buy milk"]["version"] == 2
    assert "never captured" not in rows


# -- alembic ------------------------------------------------------------------------------


def test_alembic_app_migrates_both_branches(tmp_path: Path) -> None:
    app = tmp_path / "alembic_app"
    shutil.copytree(EXAMPLES / "alembic_app", app,
                    ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    db = tmp_path / "app.db"
    alembic = [ALEMBIC if ALEMBIC.exists() else "alembic", "-c", app / "alembic.ini",
               "-x", f"url=sqlite:///{db}"]

    up = run(*alembic, "upgrade", "heads", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert tables(db) == {"alembic_version", "tasks"} | SYNC_TABLES
    check = run(*alembic, "check", cwd=tmp_path)  # the models match; sync tables ignored
    assert check.returncode == 0, check.stdout + check.stderr

    down = run(*alembic, "downgrade", "sqla_sync@base", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert tables(db) == {"alembic_version", "tasks"}
