"""Property: the pending outbox, replayed onto the last synced state, reproduces the table.

Random sequences of ORM inserts, updates, deletes, flushes, savepoints (kept
or rolled back), rollbacks and commits over a few rows.  After each commit
the pending ops are replayed as a server would apply them: an insert must
meet an absent row, an update or delete a present one, and an update carries
only the columns its change mask names (read from the row at push time).  The
replica must then equal the local table, and every row has at most one op.
Now and then everything is "pushed" (the outbox emptied) so that later
changes fold into ops of earlier transactions as well as new ones.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from sqla_sync import track
from sqla_sync.mixin import model_info
from sqla_sync.outbox import pending_ops
from sqla_sync.tables import outbox
from tests.models import Post

KEYS = ["k0", "k1", "k2"]

step = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(KEYS), st.sampled_from(["a", "b"])),
    st.tuples(st.just("update"), st.sampled_from(KEYS), st.sampled_from(["title", "body"]),
              st.sampled_from(["x", "y", "z"])),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("savepoint"), st.booleans()),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("commit"), st.booleans()),
)


def table(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Post.__table__)).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def replay(engine: Engine, synced: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    info = model_info(Post)
    assert info is not None
    local = table(engine)
    replica = {k: dict(v) for k, v in synced.items()}
    with engine.connect() as conn:
        ops = pending_ops(conn)
    keys = [op.row_key for op in ops]
    assert len(keys) == len(set(keys)), f"more than one op for a row: {keys}"
    for op in ops:
        (key,) = info.decode_key(op.row_key)
        if op.op == "insert":
            assert key not in replica, f"insert of a row the server has: {key}"
            replica[key] = dict(local[key])
        elif op.op == "update":
            assert key in replica, f"update of a row the server lacks: {key}"
            for column in info.changed_keys(op.changed):
                replica[key][column] = local[key][column]
        else:
            assert key in replica, f"delete of a row the server lacks: {key}"
            assert op.state is not None and op.state["id"] == key
            del replica[key]
    return replica


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=25))
# Each fold rule across two transactions, and one across a savepoint.
@example(steps=[("delete", "k0"), ("commit", False), ("insert", "k0", "a"), ("commit", False)])
@example(steps=[("update", "k0", "title", "x"), ("commit", False), ("update", "k0", "body", "y"),
                ("commit", False), ("delete", "k0"), ("commit", False)])
@example(steps=[("insert", "k2", "a"), ("commit", False), ("update", "k2", "body", "x"),
                ("commit", False), ("delete", "k2"), ("commit", False)])
@example(steps=[("savepoint", True), ("delete", "k1"), ("flush",), ("savepoint", False),
                ("update", "k1", "title", "z"), ("commit", False)])
def test_replaying_the_outbox_reproduces_the_table(engine: Engine,
                                                   steps: list[tuple[Any, ...]]) -> None:
    with engine.begin() as conn:
        conn.execute(delete(outbox))
        conn.execute(delete(Post.__table__))
        # Two rows the server already has, one it does not.
        conn.execute(insert(Post.__table__), [{"id": k, "title": "s", "body": ""}
                                              for k in KEYS[:2]])
    maker = track(sessionmaker(engine))
    synced = table(engine)
    session: Session = maker()
    nested = None
    try:
        for action, *args in steps:
            if action == "insert":
                key, title = args
                if session.get(Post, key) is None:
                    session.add(Post(id=key, title=title, body=""))
            elif action == "update":
                key, column, value = args
                post = session.get(Post, key)
                if post is not None:
                    setattr(post, column, value)
            elif action == "delete":
                post = session.get(Post, args[0])
                if post is not None:
                    session.delete(post)
            elif action == "flush":
                session.flush()
            elif action == "savepoint":
                if nested is None:
                    nested = session.begin_nested()
                else:
                    if args[0]:
                        nested.commit()
                    else:
                        nested.rollback()
                    nested = None
            elif action == "rollback":
                session.rollback()
                nested = None
            else:
                session.commit()
                nested = None
                assert replay(engine, synced) == table(engine)
                if args[0]:  # everything pushed
                    with engine.begin() as conn:
                        conn.execute(delete(outbox))
                    synced = table(engine)
        session.commit()
        assert replay(engine, synced) == table(engine)
    finally:
        session.close()
