"""Capture rules, compaction, transactions and bulk statements on every dialect."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, insert, select, text, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from sqla_sync import (
    ReadOnlyTableError,
    UnsupportedStatementError,
    UntrackedSessionError,
    suppress_capture,
    track,
    untrack,
)
from sqla_sync.mixin import model_info
from sqla_sync.capture import write_ops
from sqla_sync.outbox import (
    OutboxOp,
    bury,
    claim,
    complete,
    dead_letter_count,
    dead_letters,
    fold_counters,
    oldest_pending_age,
    pending_ops,
    queue_depth,
    revive,
)
from sqla_sync.tables import counters, counting_ddl, create_tables, outbox
from tests.conftest import FakeClock, StatementCounter, make_engine
from tests.models import Comment, Local, Post, Tenanted


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def Sess(engine: Engine, clock: FakeClock) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine, expire_on_commit=False)
    track(maker, clock=clock)
    yield maker
    untrack(maker)


def ops(engine: Engine) -> list[OutboxOp]:
    with engine.connect() as conn:
        return pending_ops(conn)


def summary(engine: Engine) -> list[tuple[str, Any, str, list[str]]]:
    """(table, key, op, changed columns) of every pending op, oldest first."""
    result = []
    for op in ops(engine):
        info = next(
            m for m in (model_info(Post), model_info(Comment), model_info(Tenanted))
            if m is not None and m.table_name == op.table_name
        )
        key = info.decode_key(op.row_key)
        result.append((op.table_name, key[0] if len(key) == 1 else key, op.op,
                       info.changed_keys(op.changed) if op.op == "update" else []))
    return result


def test_insert_update_delete_are_captured(engine: Engine, Sess: sessionmaker[Session],
                                           clock: FakeClock) -> None:
    with Sess() as s:
        s.add(Post(id="p1", title="one"))
        s.commit()
    assert summary(engine) == [("posts", "p1", "insert", [])]
    [op] = ops(engine)
    assert op.changed_at == clock.now and op.created_at == clock.now
    assert op.state is None  # read at push time

    with engine.begin() as conn:  # as if pushed
        conn.execute(delete(outbox))
    clock.advance(5)
    with Sess() as s:
        s.get(Post, "p1").title = "uno"  # type: ignore[union-attr]
        s.commit()
    assert summary(engine) == [("posts", "p1", "update", ["title"])]
    assert ops(engine)[0].changed_at == clock.now

    with engine.begin() as conn:
        conn.execute(delete(outbox))
    with Sess() as s:
        s.delete(s.get(Post, "p1"))
        s.commit()
    [op] = ops(engine)
    assert (op.op, op.state) == ("delete", {"id": "p1", "title": "uno", "body": ""})


def test_noop_set_and_untouched_rows_are_not_captured(engine: Engine,
                                                      Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="p1", title="one"))
        s.commit()
        with engine.begin() as conn:
            conn.execute(delete(outbox))
        post = s.get(Post, "p1")
        assert post is not None
        post.title = "one"  # same value
        s.add(Local(text="not synced"))
        s.commit()
    assert ops(engine) == []


def test_rollback_leaves_no_op_and_commit_exactly_one(engine: Engine,
                                                      Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="p1", title="one"))
        s.flush()
        assert len(ops_in(s)) == 1  # written inside the transaction
        s.rollback()
    assert ops(engine) == []
    with Sess() as s:
        post = Post(id="p1", title="one")
        s.add(post)
        s.flush()
        post.title = "two"
        s.flush()
        post.body = "text"
        s.commit()
    assert summary(engine) == [("posts", "p1", "insert", [])]


def ops_in(s: Session) -> list[Any]:
    return list(s.connection().execute(select(outbox.c.row_key, outbox.c.op)))


def test_savepoint_rollback_drops_its_ops(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="keep", title="kept"))
        nested = s.begin_nested()
        s.add(Post(id="gone", title="rolled back"))
        s.flush()
        nested.rollback()
        with s.begin_nested():
            s.add(Post(id="inner", title="committed savepoint"))
        s.commit()
    assert sorted(k for _, k, _, _ in summary(engine)) == ["inner", "keep"]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("insert", "update", [("posts", "p1", "insert", [])]),
        ("insert", "delete", []),
        ("update", "update", [("posts", "p1", "update", ["title", "body"])]),
        ("update", "delete", [("posts", "p1", "delete", [])]),
        ("delete", "insert", [("posts", "p1", "update", ["id", "title", "body"])]),
    ],
)
def test_compaction_across_transactions(engine: Engine, Sess: sessionmaker[Session],
                                        first: str, second: str,
                                        expected: list[Any]) -> None:
    if first != "insert":
        with Sess() as s:
            s.add(Post(id="p1", title="one"))
            s.commit()
        with engine.begin() as conn:
            conn.execute(delete(outbox))

    def apply(step: str, n: int) -> None:
        with Sess() as s:
            if step == "insert":
                s.add(Post(id="p1", title="again" if first == "delete" else "one"))
            elif step == "update":
                post = s.get(Post, "p1")
                assert post is not None
                if n == 0:
                    post.title = "changed"
                else:
                    post.body = "changed too"
            else:
                s.delete(s.get(Post, "p1"))
            s.commit()

    apply(first, 0)
    apply(second, 1)
    assert summary(engine) == expected


def test_claimed_op_absorbs_no_new_change(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="p1", title="one"))
        s.commit()
    [op] = ops(engine)
    with engine.begin() as conn:  # what a push does when it claims an op
        conn.execute(update(outbox).where(outbox.c.id == op.id).values(lane=op.id))
    with Sess() as s:
        s.get(Post, "p1").title = "two"  # type: ignore[union-attr]
        s.commit()
    assert summary(engine) == [("posts", "p1", "insert", []), ("posts", "p1", "update", ["title"])]


def test_primary_key_change_is_delete_then_insert(engine: Engine,
                                                  Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="old", title="t"))
        s.commit()
    with engine.begin() as conn:
        conn.execute(delete(outbox))
    with Sess() as s:
        s.get(Post, "old").id = "new"  # type: ignore[union-attr]
        s.commit()
    assert sorted(summary(engine)) == [("posts", "new", "insert", []),
                                       ("posts", "old", "delete", [])]


def test_composite_primary_keys(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add_all([Tenanted(tenant="acme", number=1, label="a"),
                   Tenanted(tenant="acme", number=2, label="b")])
        s.commit()
        with engine.begin() as conn:
            conn.execute(delete(outbox))
        s.get(Tenanted, ("acme", 1)).label = "A"  # type: ignore[union-attr]
        s.delete(s.get(Tenanted, ("acme", 2)))
        s.commit()
    assert summary(engine) == [("tenanted", ("acme", 1), "update", ["label"]),
                               ("tenanted", ("acme", 2), "delete", [])]


def test_parent_and_child_in_one_flush_keep_parent_first(engine: Engine,
                                                         Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        post = Post(id="p1", title="t")
        post.comments.append(Comment(id="c1", content="hi"))
        s.add(post)
        s.commit()
    assert [t for t, _, _, _ in summary(engine)] == ["posts", "comments"]


# -- bulk statements ---------------------------------------------------------


def test_bulk_insert_with_keys_is_captured(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.execute(insert(Post), [{"id": f"p{i}", "title": str(i)} for i in range(3)])
        s.commit()
    assert summary(engine) == [("posts", f"p{i}", "insert", []) for i in range(3)]


def test_bulk_insert_without_keys_is_refused(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s, pytest.raises(UnsupportedStatementError, match="primary key"):
        s.execute(insert(Post), [{"title": "no id"}])
    assert ops(engine) == []


def test_bulk_update_and_delete_with_where(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add_all([Post(id=f"p{i}", title="draft" if i < 3 else "final") for i in range(5)])
        s.commit()
    with engine.begin() as conn:
        conn.execute(delete(outbox))
    with Sess() as s:
        result = s.execute(update(Post).where(Post.title == "draft").values(body="b"))
        assert result.rowcount == 3  # the caller's result is untouched
        s.execute(delete(Post).where(Post.id == "p4"))
        s.commit()
    assert summary(engine) == [("posts", f"p{i}", "update", ["body"]) for i in range(3)] + [
        ("posts", "p4", "delete", [])
    ]
    assert ops(engine)[-1].state == {"id": "p4", "title": "final", "body": ""}


def test_bulk_update_by_primary_key_folds_into_pending_insert(
    engine: Engine, Sess: sessionmaker[Session]
) -> None:
    with Sess() as s:
        s.add_all([Post(id="p1", title="a"), Post(id="p2", title="b")])
        s.commit()
        s.execute(update(Post), [{"id": "p1", "title": "A"}, {"id": "p2", "body": "B"}])
        s.commit()
    assert sorted(summary(engine)) == [("posts", "p1", "insert", []),
                                       ("posts", "p2", "insert", [])]


def test_bulk_delete_of_pending_insert_leaves_nothing(engine: Engine,
                                                     Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add_all([Post(id="p1", title="a"), Post(id="p2", title="b")])
        s.commit()
        s.execute(delete(Post).where(Post.id == "p1"))
        s.commit()
    assert summary(engine) == [("posts", "p2", "insert", [])]


@pytest.mark.parametrize("tracked", [True, False])
def test_legacy_bulk_methods_are_refused_for_synced_models(
        engine: Engine, Sess: sessionmaker[Session], tracked: bool) -> None:
    """bulk_save_objects and bulk_*_mappings emit no ORM event: capture could
    never see their rows, so they are refused instead of silently skipped."""
    with Sess() if tracked else Session(engine) as s:
        s.add(Post(id="p0", title="t"))
        s.commit() if tracked else s.rollback()
        objects = (Post(id=f"p{i}", title="t") for i in range(1, 3))  # a generator
        with pytest.raises(UnsupportedStatementError, match=r"bulk_save_objects\(\) writes Post"):
            s.bulk_save_objects(objects)
        with pytest.raises(UnsupportedStatementError, match=r"insert\(Post\)"):
            s.bulk_insert_mappings(Post, [{"id": "p3", "title": "t"}])
        with pytest.raises(UnsupportedStatementError, match=r"update\(Post\)"):
            s.bulk_update_mappings(model_info(Post).mapper, [{"id": "p0", "title": "x"}])
        with pytest.raises(UnsupportedStatementError, match=r"insert\(Post\)"):
            s.bulk_insert_mappings(aliased(Post), [{"id": "p4", "title": "t"}])
        # Models that are not synced pass through, generators included.
        s.bulk_save_objects(Local(id=i, text="t") for i in range(1, 3))
        s.bulk_insert_mappings(Local, [{"id": 5, "text": "t"}])
        s.bulk_update_mappings(Local, [{"id": 5, "text": "u"}])
        s.commit()
    with engine.connect() as conn:
        assert conn.execute(select(Post.id, Post.title)).all() == (
            [("p0", "t")] if tracked else [])
        assert sorted(conn.execute(select(Local.id, Local.text))) == [
            (1, "t"), (2, "t"), (5, "u")]
    assert summary(engine) == ([("posts", "p0", "insert", [])] if tracked else [])


# -- untracked sessions and suppression --------------------------------------


def test_untracked_session_is_refused(engine: Engine) -> None:
    with Session(engine) as s:
        s.add(Post(id="p1", title="t"))
        with pytest.raises(UntrackedSessionError, match="track"):
            s.flush()
        s.rollback()
        with pytest.raises(UntrackedSessionError, match="track"):
            s.execute(update(Post).values(title="x"))
        s.add(Local(text="plain models are fine"))
        s.commit()
    with engine.connect() as conn:
        assert conn.execute(select(Post)).all() == []


def test_untracked_refusal_comes_before_anything_is_written(engine: Engine) -> None:
    """On an AUTOCOMMIT connection nothing would roll a written row back: the
    refusal must come before the INSERT, and so must a read-only refusal."""
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    with Session(autocommit) as s:
        s.add(Post(id="u1", title="t"))
        with pytest.raises(UntrackedSessionError, match="track"):
            s.commit()
    maker = track(sessionmaker(autocommit))
    info = model_info(Post)
    assert info is not None
    info.read_only = True
    try:
        with maker() as s:
            s.add(Post(id="r1", title="t"))
            with pytest.raises(ReadOnlyTableError, match="read-only"):
                s.commit()
    finally:
        info.read_only = False
        untrack(maker)
    with engine.connect() as conn:
        assert conn.execute(select(Post)).all() == []
    assert ops(engine) == []


def test_a_read_only_parent_whose_collection_changes_is_not_written(
        engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        s.add(Post(id="p1", title="t"))
        s.commit()
    info = model_info(Post)
    assert info is not None
    info.read_only = True
    try:
        with Sess() as s:
            post = s.get(Post, "p1")
            assert post is not None
            post.comments.append(Comment(id="c1", content="hi"))  # writes comments only
            s.commit()
            post.title = "changed"
            with pytest.raises(ReadOnlyTableError, match="read-only"):
                s.commit()
    finally:
        info.read_only = False
    assert summary(engine) == [("posts", "p1", "insert", []), ("comments", "c1", "insert", [])]


def test_untrack_restores_refusal_and_track_is_idempotent(engine: Engine,
                                                          clock: FakeClock) -> None:
    maker = sessionmaker(engine)
    track(maker, clock=clock)
    track(maker, clock=clock)  # twice: still one op per change
    with maker() as s:
        s.add(Post(id="p1", title="t"))
        s.commit()
    assert len(ops(engine)) == 1
    untrack(maker)
    untrack(maker)
    with maker() as s:
        s.add(Post(id="p2", title="t"))
        with pytest.raises(UntrackedSessionError):
            s.commit()


def test_tracking_one_session_instance(engine: Engine) -> None:
    with Session(engine) as s:
        track(s)
        s.add(Post(id="p1", title="t"))
        s.commit()
    assert len(ops(engine)) == 1


def test_suppressed_writes_are_not_captured(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with Sess() as s:
        with suppress_capture(s):
            s.add(Post(id="from-server", title="pulled"))
            s.flush()
            s.execute(update(Post).values(body="pulled too"))
        s.add(Post(id="local", title="mine"))
        s.commit()
    with Session(engine) as s, suppress_capture(s):  # untracked: allowed while suppressed
        s.get(Post, "from-server").title = "resolved"  # type: ignore[union-attr]
        s.commit()
    assert summary(engine) == [("posts", "local", "insert", [])]


# -- statement counts -------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 10, 200])
def test_capture_adds_constant_statements_per_flush(engine: Engine, Sess: sessionmaker[Session],
                                                    rows: int) -> None:
    with Sess() as s, StatementCounter(engine) as counter:
        s.add_all([Post(id=f"p{i}", title="t") for i in range(rows)])
        s.flush()
        inserts = counter.count
        for post in s.query(Post).all():
            post.title = "changed"
        s.flush()
        s.commit()
    outbox_statements = [x for x in counter.statements if "sqla_sync_outbox" in x]
    # One upsert for the inserts, one for the updates, however many rows.
    assert len(outbox_statements) == 2
    assert inserts <= (rows if engine.dialect.name == "mysql" else 1) + 2


# -- queue depth -------------------------------------------------------------


def _count_pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(pending_ops(conn))


def test_queue_depth_stays_exact(engine: Engine, Sess: sessionmaker[Session]) -> None:
    def depth() -> int:
        with engine.connect() as conn:
            return queue_depth(conn)

    with Sess() as s:
        s.add_all([Post(id=f"p{i}", title="t") for i in range(6)])
        s.commit()
        assert depth() == _count_pending(engine) == 6
        for post in s.query(Post).all():  # folds into the pending inserts
            post.title = "changed"
        s.delete(s.get(Post, "p5"))  # cancels its pending insert
        s.commit()
    assert depth() == _count_pending(engine) == 5
    first, second, third = (op.id for op in ops(engine)[:3])
    with engine.begin() as conn:
        bury(conn, [{"op_id": first, "attempts": 5, "last_error": "gone"}])
        complete(conn, [second])
        claim(conn, [op for op in ops(engine) if op.id == third], 1.0)  # still pending
    assert depth() == _count_pending(engine) == 3
    with engine.begin() as conn:
        assert revive(conn, first)
    assert depth() == _count_pending(engine) == 4

    # Two sessions at once (one after the other on SQLite, which has one
    # writer), one rolled back: the count follows the commits.
    with Sess() as a, Sess() as b:
        if engine.dialect.name != "sqlite":
            a.add(Post(id="a1", title="t"))
            a.flush()
        b.add(Post(id="b1", title="t"))
        b.flush()
        b.rollback()
        if engine.dialect.name == "sqlite":
            a.add(Post(id="a1", title="t"))
        a.commit()
    assert depth() == _count_pending(engine) == 5
    with engine.begin() as conn:
        conn.execute(delete(outbox))
        assert queue_depth(conn) == 0


def _counter_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(counters)).all())


def _insert_ops(conn: Any, *keys: str) -> None:
    write_ops(conn, [("posts", f'["{k}"]', "insert", 1, None, 1.0, 1.0) for k in keys])


def test_folding_the_counters_keeps_the_depth_and_skips_writers_in_flight(
        engine: Engine) -> None:
    server = engine.dialect.name != "sqlite"
    # Three database sessions write ops: on a server, one counter row each.
    sessions = [engine.connect() for _ in range(3)]
    try:
        for i, conn in enumerate(sessions):
            with conn.begin():
                _insert_ops(conn, f"a{i}", f"b{i}")
        assert _counter_rows(engine) == (3 if server else 0)
        busy = sessions[0]
        with busy.begin():
            _insert_ops(busy, "c0")  # holds its counter row until it commits
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                elif server:
                    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 10")
                # Not blocked by the writer in flight: its row is left for later.
                assert fold_counters(conn) == (2 if server else 0)
                assert queue_depth(conn) == 6
        with engine.connect() as conn:
            assert queue_depth(conn) == len(pending_ops(conn)) == 7
            conn.commit()
        with engine.begin() as conn:
            assert fold_counters(conn) == (1 if server else 0)
        assert _counter_rows(engine) == (1 if server else 0)
        with sessions[1].begin():
            complete(sessions[1], [op.id for op in ops(engine)[:3]])
        with engine.connect() as conn:
            assert queue_depth(conn) == len(pending_ops(conn)) == 4
    finally:
        for conn in sessions:
            conn.close()


def test_create_tables_gives_an_outbox_without_counting_its_triggers(engine: Engine) -> None:
    """An outbox created by a version without the queue-depth triggers (on
    PostgreSQL they came later) gets them from create_tables, counting from
    the ops already there."""
    with engine.begin() as conn:
        _, drop = counting_ddl(engine.dialect.name, conn.execute(
            text("SELECT current_schema()")).scalar_one()
            if engine.dialect.name == "postgresql" else None)
        for statement in drop:
            conn.exec_driver_sql(statement)
        _insert_ops(conn, "a", "b", "c")
        conn.execute(delete(counters))
    create_tables(engine)
    with engine.begin() as conn:
        _insert_ops(conn, "d")
        conn.execute(delete(outbox).where(outbox.c.row_key == '["a"]'))
    with engine.connect() as conn:
        assert queue_depth(conn) == len(pending_ops(conn)) == 3


def _dead_index_sql(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'ix_sqla_sync_outbox_status_id'"
        ).scalar_one())


def _plans(engine: Engine, run: Any) -> dict[str, str]:
    """SQLite's plan of each SELECT that ``run(conn)`` sends, by statement."""
    plans: dict[str, str] = {}
    with engine.connect() as conn:
        def explain(_conn: Any, cursor: Any, statement: str, parameters: Any,
                    _context: Any, _many: bool) -> None:
            if statement.startswith("SELECT"):
                rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
                plans[statement] = " / ".join(row[3] for row in rows)

        event.listen(conn, "before_cursor_execute", explain)
        run(conn)
    return plans


def test_sqlite_indexes_only_dead_letters_by_status(tmp_path: Any) -> None:
    """On SQLite a commit of new ops writes no page of the (status, id) index:
    it holds the dead letters alone, which the dead-letter reads use; pending
    ops are read in rowid order (stepping over older dead letters), and no
    read of the queue sorts."""
    engine = make_engine("sqlite", tmp_path)
    create_tables(engine)
    assert _dead_index_sql(engine).endswith("WHERE status = 'dead'")
    with engine.begin() as conn:
        _insert_ops(conn, "a", "b", "c", "d")
        first = pending_ops(conn)[0].id
        bury(conn, [{"op_id": first, "attempts": 5, "last_error": "gone"}])
    plans = _plans(engine, lambda conn: (
        pending_ops(conn, limit=2), queue_depth(conn), oldest_pending_age(conn, 2.0),
        dead_letter_count(conn), dead_letters(conn)))
    assert len(plans) == 5
    text_of_plans = " | ".join(plans.values())
    assert "TEMP B-TREE" not in text_of_plans, plans
    dead_reads = [p for s, p in plans.items() if "= 'dead'" in s]
    assert len(dead_reads) == 3  # the depth's subtraction, the count, the list
    assert all("ix_sqla_sync_outbox_status_id" in p for p in dead_reads), plans
    ordered = [p for s, p in plans.items() if "ORDER BY sqla_sync_outbox.id" in s
               and "= 'dead'" not in s]
    assert len(ordered) == 2  # the next ops, the oldest age: walk the rowid in order
    assert all("ix_sqla_sync_outbox_status_id" not in p for p in ordered), plans
    with engine.connect() as conn:
        assert [op.row_key for op in pending_ops(conn)] == ['["b"]', '["c"]', '["d"]']
        assert queue_depth(conn) == 3
        assert dead_letter_count(conn) == 1
        assert oldest_pending_age(conn, 2.0) == 1.0
    engine.dispose()


def test_create_tables_keeps_only_dead_letters_in_an_older_sqlite_status_index(
        tmp_path: Any) -> None:
    """An SQLite outbox whose (status, id) index held every op (before
    revision a1f0c0de0003) gets the dead-letter-only one from create_tables,
    with its counts unchanged."""
    engine = make_engine("sqlite", tmp_path)
    create_tables(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_sqla_sync_outbox_status_id")
        conn.exec_driver_sql(
            "CREATE INDEX ix_sqla_sync_outbox_status_id ON sqla_sync_outbox (status, id)")
        _insert_ops(conn, "a", "b", "c")
        bury(conn, [{"op_id": pending_ops(conn)[0].id, "attempts": 5, "last_error": "x"}])
    create_tables(engine)
    assert _dead_index_sql(engine).endswith("WHERE status = 'dead'")
    with engine.connect() as conn:
        assert queue_depth(conn) == len(pending_ops(conn)) == 2
        assert dead_letter_count(conn) == 1
    create_tables(engine)  # nothing left to change
    assert _dead_index_sql(engine).endswith("WHERE status = 'dead'")
    # A rebuild cut short after the DROP INDEX (pysqlite commits it alone).
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_sqla_sync_outbox_status_id")
    create_tables(engine)
    assert _dead_index_sql(engine).endswith("WHERE status = 'dead'")
    engine.dispose()
