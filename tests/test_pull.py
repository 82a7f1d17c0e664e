"""Pull against the example backend: pages, cursors that never skip, tombstones, reconcile."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from examples.server.run import BackendServer
from sqla_sync import (
    Cursor,
    ForbiddenRedirectError,
    NextLink,
    Offset,
    PageNumber,
    Pull,
    PullError,
    Push,
    ReadOnlyTableError,
    Request,
    Routes,
    Schedule,
    SyncConfig,
    SyncEngine,
    define_routes,
    start_sync,
    track,
    untrack,
)
from sqla_sync.outbox import pending_ops
from sqla_sync.tables import shadow
from tests.conftest import FakeClock
from tests.models import Article

PUSH = Push(create=Request("POST", "/api/posts"), update=Request("PUT", "/api/posts/{id}"),
            delete=Request("DELETE", "/api/posts/{id}"))


def routes(*, inclusive: bool = False, paginate: Any = None, push: bool = True,
           **pull_kw: Any) -> Any:
    pull = Pull("GET", "/api/posts", map_response=lambda body: body["data"],
                cursor=pull_kw.pop("cursor", Cursor(field="updatedAt", param="updated_after",
                                                   inclusive=inclusive)),
                paginate=paginate if paginate is not None else Offset(),
                deleted=lambda row: row.get("deleted", False), **pull_kw)
    return define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                             push=PUSH if push else None, pull=pull)})


@pytest.fixture
def Sess(engine: Engine) -> Iterator[sessionmaker[Session]]:
    maker = track(sessionmaker(engine, expire_on_commit=False))
    yield maker
    untrack(maker)


def sync_engine(engine: Engine, server: BackendServer, table_routes: Any, *,
                page_size: int = 100, max_pages: int = 50, **kw: Any) -> SyncEngine:
    return start_sync(engine, SyncConfig(
        base_url=server.url, routes=table_routes, clock=kw.pop("clock", FakeClock()),
        sync=Schedule(pull_page_size=page_size, pull_max_pages=max_pages,
                      push_concurrency=1), **kw))


def local_rows(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Article.id, Article.title, Article.body, Article.version))
        return {r[0]: tuple(r[1:]) for r in rows}


def server_view(server: BackendServer) -> dict[str, tuple[Any, ...]]:
    return {r["id"]: (r["title"], r["body"], r["version"])
            for r in server.store.rows("posts") if not r["deleted"]}


def seed(server: BackendServer, ids: list[str], **fields: Any) -> None:
    server.store.seed("posts", [{"id": i, "title": f"t-{i}", "body": "b", **fields} for i in ids])


@pytest.mark.parametrize("ts", ["iso", "epoch_ms", "epoch_s"])
@pytest.mark.parametrize("filter_", ["strict", "inclusive"])
@pytest.mark.parametrize("pager", ["offset", "page"])
def test_250_rows_on_one_timestamp_all_arrive(engine: Engine, ts: str, filter_: str,
                                              pager: str) -> None:
    with BackendServer(ts=ts, filter=filter_) as server:
        server.store.freeze_clock(1_700_000_000_000)
        seed(server, [f"r{i:03}" for i in range(250)])
        paginate = Offset() if pager == "offset" else PageNumber()
        with sync_engine(engine, server, routes(inclusive=filter_ == "inclusive",
                                                paginate=paginate)) as sync:
            first = sync.pull()
            assert first.pulled == 250
            again = sync.pull()
            assert again.pulled == 0  # nothing applied twice
        assert local_rows(engine) == server_view(server)


@pytest.mark.parametrize("filter_", ["strict", "inclusive"])
def test_1000_rows_on_three_timestamps_all_arrive(engine: Engine, filter_: str) -> None:
    with BackendServer(filter=filter_) as server:
        for n, stamp in enumerate([1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]):
            server.store.freeze_clock(stamp)
            seed(server, [f"r{n}-{i:03}" for i in range(333 + (n == 2))])
        with sync_engine(engine, server, routes(inclusive=filter_ == "inclusive")) as sync:
            assert sync.pull().pulled == 1000
        assert local_rows(engine) == server_view(server)


def test_rows_changed_between_pages_end_up_current(engine: Engine) -> None:
    with BackendServer() as server:
        seed(server, [f"r{i:03}" for i in range(300)])
        pages: list[int] = []

        def edit_after_first_page(body: Any, ctx: Any) -> None:
            pages.append(ctx.response.status)
            if len(pages) == 1:  # another client edits rows already pulled and not yet
                for i in (5, 50, 150, 250):
                    server.store.admin_patch("posts", f"r{i:03}", {"title": f"edited {i}"})

        with sync_engine(engine, server, routes(on_complete=edit_after_first_page)) as sync:
            sync.pull()
            sync.pull()
        assert local_rows(engine) == server_view(server)
        assert local_rows(engine)["r005"][0] == "edited 5"


@pytest.mark.parametrize("filter_", ["strict", "inclusive"])
def test_rows_moving_while_one_timestamp_is_paged_are_not_lost(engine: Engine,
                                                               filter_: str) -> None:
    with BackendServer(filter=filter_) as server:
        server.store.freeze_clock(1_700_000_000_000)
        seed(server, [f"r{i:03}" for i in range(250)])
        server.store.freeze_clock(None)
        calls: list[int] = []

        def move_rows(body: Any, ctx: Any) -> None:
            calls.append(1)
            if len(calls) == 1:  # rows leave the group: everything after them shifts
                for i in range(10, 40):
                    server.store.admin_patch("posts", f"r{i:03}", {"body": "moved"})

        with sync_engine(engine, server, routes(inclusive=filter_ == "inclusive",
                                                on_complete=move_rows)) as sync:
            sync.pull()
            sync.pull()
        assert local_rows(engine) == server_view(server)


def test_a_failure_after_page_2_of_5_resumes_without_loss_or_doubles(engine: Engine) -> None:
    with BackendServer() as server:
        seed(server, [f"r{i:03}" for i in range(500)])
        server.faults.add(method="GET", path="/api/posts", action="status", status=500, skip=2)
        with sync_engine(engine, server, routes()) as sync:
            with pytest.raises(PullError, match="500"):
                sync.pull()
            # Pages 1-2 are applied with their checkpoint (a strict server's
            # emulated inclusive bound re-lists one row per page, dropped).
            applied = len(local_rows(engine))
            assert 190 <= applied <= 200
            second = sync.pull()
            assert second.pulled == 500 - applied  # nothing lost, nothing applied twice
        assert local_rows(engine) == server_view(server)


def test_tombstones_delete_locally(engine: Engine) -> None:
    with BackendServer() as server:
        seed(server, ["a", "b", "c"])
        with sync_engine(engine, server, routes()) as sync:
            sync.pull()
            server.store.admin_delete("posts", "b")
            result = sync.pull()
            assert result.deleted == 1
        assert sorted(local_rows(engine)) == ["a", "c"]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(shadow)).scalar() == 2


def test_a_separate_deletions_feed(engine: Engine) -> None:
    with BackendServer(tombstones=False) as server:
        seed(server, ["a", "b", "c"])
        table = define_routes({"articles": Routes(
            fields={"updated_at": "updatedAt"}, push=PUSH,
            pull=Pull("GET", "/api/posts", map_response=lambda b: b["data"],
                      cursor=Cursor(field="updatedAt", param="updated_after"),
                      paginate=Offset()),
            deletions=Pull("GET", "/api/posts/deleted", map_response=lambda b: b["data"],
                           cursor=Cursor(field="deletedAt", param="since")))})
        with sync_engine(engine, server, table) as sync:
            sync.pull()
            server.store.admin_delete("posts", "a")
            assert sync.pull().deleted == 1
        assert sorted(local_rows(engine)) == ["b", "c"]


def test_reconcile_deletes_rows_the_server_no_longer_lists(
    engine: Engine, Sess: sessionmaker[Session]
) -> None:
    with BackendServer(tombstones=False) as server:
        seed(server, ["a", "b", "c"])
        table = routes(reconcile=True, reconcile_interval=0.0)
        with sync_engine(engine, server, table) as sync:
            sync.pull()
            server.store.admin_delete("posts", "b")  # hard delete: no tombstone, no feed
            with Sess() as s:
                s.add(Article(id="local-only", title="not pushed yet"))
                s.commit()
            result = sync.pull()
            assert result.deleted == 1
        assert sorted(local_rows(engine)) == ["a", "c", "local-only"]


def test_pulled_rows_are_not_captured_and_are_coerced(engine: Engine) -> None:
    with BackendServer(ts="epoch_ms") as server:
        seed(server, ["a"])
        with sync_engine(engine, server, routes()) as sync:
            sync.pull()
            assert sync.queue_depth() == 0
        with engine.connect() as conn:
            updated_at = conn.execute(select(Article.updated_at)).scalar_one()
        # An epoch number lands in a string column as its text; unknown fields are ignored.
        assert updated_at == str(server.store.rows("posts")[0]["updatedAt"])


def test_a_local_edit_survives_a_re_listed_unchanged_row(engine: Engine,
                                                        Sess: sessionmaker[Session]) -> None:
    with BackendServer(filter="inclusive") as server:
        seed(server, ["a"])
        events: list[Any] = []
        with sync_engine(engine, server, routes(inclusive=True)) as sync:
            sync.on("conflict", events.append)
            sync.pull()
            with Sess() as s:
                s.get(Article, "a").title = "mine"  # type: ignore[union-attr]
                s.commit()
            sync.pull()  # the inclusive bound lists "a" again, unchanged
            assert local_rows(engine)["a"][0] == "mine"
            assert events == []
            assert sync.sync().pushed == 1
        assert server_view(server)["a"][0] == "mine"


def test_our_own_push_echo_is_not_a_conflict(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with BackendServer() as server:
        events: list[Any] = []
        with sync_engine(engine, server, routes()) as sync:
            sync.on("conflict", events.append)
            with Sess() as s:
                s.add(Article(id="a", title="one"))
                s.commit()
            sync.push()
            with Sess() as s:
                s.get(Article, "a").body = "edited"  # type: ignore[union-attr]
                s.commit()
            result = sync.sync()  # the pull lists our own create
            assert (result.conflicts, result.pushed) == (0, 1)
            assert events == []
        assert server_view(server)["a"][1] == "edited"


def test_a_next_link_to_another_host_is_refused(engine: Engine) -> None:
    with BackendServer() as server:
        seed(server, [f"r{i}" for i in range(5)])
        table = routes(cursor=None, paginate=NextLink(
            header=None, body=lambda b: "http://127.0.0.2:9/api/posts?offset=2"))
        with sync_engine(engine, server, table, page_size=2) as sync:
            with pytest.raises(PullError, match=r"refusing http://127\.0\.0\.2:9") as caught:
                sync.pull()
        assert isinstance(caught.value.__cause__, ForbiddenRedirectError)
        assert len(server.store.requests()) == 1


@pytest.mark.parametrize("style", ["link", "next-page", "body", "cursor"])
def test_server_driven_paging_without_a_library_cursor(engine: Engine, style: str) -> None:
    from sqla_sync import BodyCursor

    pagers = {"link": NextLink(header="Link"), "next-page": NextLink(header="Next-Page"),
              "body": NextLink(header=None, body=lambda b: b["next"]),
              "cursor": BodyCursor(body=lambda b: b["next_cursor"])}
    with BackendServer() as server:
        seed(server, [f"r{i:02}" for i in range(25)])
        with sync_engine(engine, server, routes(cursor=None, paginate=pagers[style]),
                         page_size=10) as sync:
            result = sync.pull()
        assert (result.pulled, result.pages) == (25, 3)
        assert local_rows(engine) == server_view(server)


def test_hand_kept_checkpoint_of_the_seed_still_works(engine: Engine) -> None:
    with BackendServer(ts="epoch_ms") as server:
        seed(server, ["a", "b"])
        seen: list[Any] = []

        def on_complete(body: Any, ctx: Any) -> None:
            seen.append(ctx.response.status)
            latest = max((row["updatedAt"] for row in body["data"]), default=None)
            if latest is not None:
                ctx.set_checkpoint("pull:posts", latest)

        table = define_routes({"articles": Routes(
            fields={"updated_at": "updatedAt"}, push=PUSH,
            pull=Pull("GET", "/api/posts",
                      query=lambda ctx: {"updated_after":
                                         ctx.get_checkpoint("pull:posts") or 0},
                      map_response=lambda b: b["data"], on_complete=on_complete))})
        with sync_engine(engine, server, table) as sync:
            assert sync.pull().pulled == 2
            seed(server, ["c"])
            assert sync.pull().pulled == 1
        assert seen == [200, 200]
        assert sorted(local_rows(engine)) == ["a", "b", "c"]
        queries = [r["query"] for r in server.store.requests()]
        assert queries[0]["updated_after"] == "0" and queries[1]["updated_after"] != "0"


def test_a_pull_only_table_is_read_only(engine: Engine, Sess: sessionmaker[Session]) -> None:
    with BackendServer() as server:
        seed(server, ["a"])
        with sync_engine(engine, server, routes(push=False)) as sync:
            sync.pull()
            with Sess() as s:
                s.get(Article, "a").title = "local"  # type: ignore[union-attr]
                with pytest.raises(ReadOnlyTableError, match="read-only"):
                    s.commit()
        with engine.connect() as conn:
            assert pending_ops(conn) == []
    # Other engines may make the table writable again.
    from sqla_sync.mixin import model_info

    info = model_info(Article)
    assert info is not None
    info.read_only = False


# -- reading and writing a page -----------------------------------------------------------


def _applier(table_routes: Any) -> Any:
    from sqla_sync.conflicts import Conflicts
    from sqla_sync.pull import Applier

    table = table_routes["articles"]
    return Applier(table, Conflicts(), FakeClock(), "updatedAt")


@pytest.mark.parametrize("row, error", [
    ({"id": [1], "title": "t"}, r"column 'id' cannot hold \[1\]: expected text, got a JSON array"),
    ({"id": "b", "title": {"a": 1}},
     r"column 'title' cannot hold \{'a': 1\}: expected text, got a JSON object"),
    ({"id": "b", "title": True}, r"column 'title' cannot hold True: expected text, got a JSON "
                                 r"boolean"),
])
def test_a_wrong_json_type_fails_its_page_instead_of_being_stored_as_text(
        engine: Engine, row: dict[str, Any], error: str) -> None:
    applier = _applier(routes())
    with pytest.raises(PullError, match="articles: a server row could not be read: ValueError: " + error):
        with engine.begin() as conn:
            applier.apply(conn, [{"id": "a", "title": "fine"}, row], now=0.0)
    assert local_rows(engine) == {}
    # Numbers still land in a text column as their text.
    with engine.begin() as conn:
        applier.apply(conn, [{"id": 5, "title": 2.5, "body": 7}], now=0.0)
    assert local_rows(engine) == {"5": ("2.5", "7", None)}


@pytest.mark.parametrize("fields", [{}, {"updated_at": "updatedAt"},
                                    {"title": "body", "body": "title"},
                                    {"title": "heading", "updated_at": "title"}])
def test_the_read_plan_reads_a_row_as_columns_of_does(fields: dict[str, str]) -> None:
    table_routes = define_routes({"articles": Routes(fields=fields, push=PUSH,
                                                     pull=Pull("GET", "/api/posts"))})
    applier = _applier(table_routes)
    rows: list[dict[str, Any]] = [
        {"id": "a", "title": "t", "body": None, "updatedAt": "u", "version": 3, "extra": [1]},
        {"id": "a", "updated_at": "local name", "updatedAt": "server name"},
        {"id": "a", "updatedAt": "server name", "updated_at": "local name"},
        {"id": 5, "version": 7, "heading": "h", "title": "x", "body": "y"},
        {"id": "a"},
        {},
    ]
    for row in rows:
        assert applier.columns(row) == table_routes["articles"].columns_of(row), row


def test_a_page_without_pending_ops_reads_no_shadow_and_rewrites_it(engine: Engine) -> None:
    from tests.conftest import StatementCounter

    with BackendServer() as server:
        seed(server, [f"r{i:02}" for i in range(30)])
        with sync_engine(engine, server, routes()) as sync:
            with StatementCounter(engine) as counter:
                assert sync.pull().pulled == 30
            shadow_reads = [s for s in counter.statements
                            if s.lstrip().upper().startswith("SELECT") and "sqla_sync_rows" in s]
            assert shadow_reads == []
            server.store.admin_patch("posts", "r07", {"title": "edited"})
            assert sync.pull().pulled == 1
        with engine.connect() as conn:
            states = {r.row_key: r.state for r in conn.execute(select(shadow))}
    assert len(states) == 30
    assert '"title":"edited"' in states['["r07"]'] and '"title":"t-r08"' in states['["r08"]']


@pytest.mark.parametrize("type_name", ["String", "Text", "Integer", "BigInteger", "Float",
                                       "Numeric", "NumericFloat", "Boolean", "JSON", "Uuid",
                                       "UuidText", "Enum", "DateTime", "Date", "LargeBinary"])
def test_values_a_codec_keeps_as_they_are_decode_unchanged(type_name: str) -> None:
    import sqlalchemy as sa

    from sqla_sync.codec import codec_for

    types: dict[str, Any] = {
        "String": sa.String(), "Text": sa.Text(), "Integer": sa.Integer(),
        "BigInteger": sa.BigInteger(), "Float": sa.Float(), "Numeric": sa.Numeric(),
        "NumericFloat": sa.Numeric(asdecimal=False), "Boolean": sa.Boolean(), "JSON": sa.JSON(),
        "Uuid": sa.Uuid(), "UuidText": sa.Uuid(as_uuid=False), "Enum": sa.Enum("x", "y"),
        "DateTime": sa.DateTime(), "Date": sa.Date(), "LargeBinary": sa.LargeBinary(),
    }
    codec = codec_for(sa.Column("c", types[type_name]))
    samples: list[Any] = ["2024-01-02", 5, 2.5, True, [1], {"a": 1}]
    for sample in samples:
        if codec.as_is is None or type(sample) in codec.as_is:
            decoded = codec._decode(sample)  # the decoder itself, not the shortcut
            assert decoded == sample and type(decoded) is type(sample), (type_name, sample)


def test_the_next_page_is_asked_for_while_a_page_is_applied_never_past_the_limit(
        engine: Engine) -> None:
    with BackendServer() as server:
        seed(server, [f"r{i:03}" for i in range(500)])
        refuse = {"r150"}  # on page 2, once

        def map_row(row: dict[str, Any]) -> dict[str, Any]:
            if row["id"] in refuse:
                refuse.clear()
                raise ValueError("refused once")
            return {}

        with sync_engine(engine, server, routes(map_row=map_row), max_pages=3) as sync:
            with pytest.raises(PullError, match="refused once"):
                sync.pull()
            assert len(local_rows(engine)) == 100  # page 1 and its checkpoint only
            # Pages 1 and 2, and page 3, asked for while page 2 was applied; that
            # request has ended by the time pull() raises.
            assert len(server.store.requests()) == 3
            second = sync.pull()
            assert second.pages == 3 and len(server.store.requests()) == 6
            while sync.pull().pulled:
                pass
        assert local_rows(engine) == server_view(server)
