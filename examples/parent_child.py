"""A parent and its children created offline, linked again after the server assigns ids.

The backend here numbers rows itself (``id_mode="server"``: 1, 2, 3, ...), so
rows written offline get *temporary* keys that can never collide with the
server's: negative integers.  One ``sync()`` pushes the parent first, reads the
server's id from the create answer, and re-keys the row everywhere: in the
``posts`` table, in sqla_sync's shadow, in the parent's pending ops and in the
children's foreign keys, so the children are created on the server already
pointing at the parent's real id::

    python examples/parent_child.py          # or: python -m examples.parent_child

It starts its own :class:`~sqla_sync.example_server.BackendServer` (with one
post and one comment from "someone else", so the ids really move), prints the
local ids before and after, and exits 0 when the server's comments point at
the server's post.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from sqla_sync.example_server import BackendServer  # type: ignore[import-not-found,unused-ignore]
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sqla_sync import (
    Cursor,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    RouteTable,
    Schedule,
    Syncable,
    SyncConfig,
    create_tables,
    define_routes,
    start_sync,
    track,
)

__all__ = ["Base", "Comment", "Post", "main", "routes", "run"]


class Base(DeclarativeBase):
    """Declarative base of this example."""


class Post(Syncable, Base):
    """The parent; ``id`` is negative until the server numbers it."""

    __tablename__ = "posts"

    # autoincrement=False: the application picks the (temporary) key itself.
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(String(2000), default=None)
    updated_at: Mapped[str | None] = mapped_column(String(40), default=None)
    version: Mapped[int | None] = mapped_column(default=None)


class Comment(Syncable, Base):
    """A child: the foreign key makes sqla_sync push it after its post and re-key it."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    content: Mapped[str] = mapped_column(String(2000))
    updated_at: Mapped[str | None] = mapped_column(String(40), default=None)
    version: Mapped[int | None] = mapped_column(default=None)


def _rows(body: Any) -> Any:
    return body["data"]


def _resource(path: str, fields: dict[str, str]) -> Routes:
    return Routes(
        fields=fields,
        push=Push(create=Request("POST", path), update=Request("PUT", path + "/{id}"),
                  delete=Request("DELETE", path + "/{id}")),
        pull=Pull("GET", path, map_response=_rows,
                  cursor=Cursor(field="updatedAt", param="updated_after"), paginate=Offset(),
                  deleted=lambda row: bool(row.get("deleted", False))),
    )


def routes() -> RouteTable:
    """``posts`` and ``comments``; the child's ``post_id`` is the server's ``postId``."""
    return define_routes({
        "posts": _resource("/api/posts", {"updated_at": "updatedAt"}),
        "comments": _resource("/api/comments",
                              {"post_id": "postId", "updated_at": "updatedAt"}),
    })


def main() -> int:
    """Run the example; returns 0 when the children follow their parent's server id."""
    with tempfile.TemporaryDirectory(prefix="parent-child-") as folder:
        return run(Path(folder) / "local.db")


def run(db_path: Path) -> int:
    """The example against the SQLite file ``db_path``."""
    engine = create_engine(f"sqlite:///{db_path}")
    Base.metadata.create_all(engine)
    create_tables(engine)
    Session = track(sessionmaker(engine, expire_on_commit=False))

    # Offline: a parent and two children with temporary negative ids.
    with Session() as session:
        session.add(Post(id=-1, title="Trip to the coast"))
        session.flush()  # the parent's insert comes before its children's
        # One flush per comment: within one flush the unit of work orders rows of
        # a table as it likes, and the printed server ids should not vary.
        session.add(Comment(id=-1, post_id=-1, content="pack a jacket"))
        session.flush()
        session.add(Comment(id=-2, post_id=-1, content="check the tides"))
        session.commit()
    with Session() as session:
        comments = session.scalars(select(Comment).order_by(Comment.id.desc())).all()
        print("before sync: post -1; comments "
              + ", ".join(f"{c.id} -> post {c.post_id}" for c in comments))

    with BackendServer(id_mode="server") as server:
        # Someone else's rows, so that the server's numbers differ from ours.
        server.store.seed("posts", [{"id": 1, "title": "someone else's post"}])
        server.store.seed("comments", [{"id": 1, "postId": 1, "content": "first!"}])
        # One request at a time only so that the printed ids are the same on every
        # run; with concurrency the two comments (unrelated rows) race each other.
        sync = start_sync(engine, SyncConfig(base_url=server.url, routes=routes(),
                                             sync=Schedule(interval=0, push_concurrency=1)))
        try:
            result = sync.sync()
            print(f"one sync: pulled {result.pulled}, pushed {result.pushed}, "
                  f"queue {sync.queue_depth()}")
            server_posts = {r["id"]: r for r in server.store.rows("posts")}
            server_comments = server.store.rows("comments")
        finally:
            sync.stop()

    with Session() as session:
        post = session.scalars(select(Post).where(Post.title == "Trip to the coast")).one()
        mine = session.scalars(
            select(Comment).where(Comment.content != "first!").order_by(Comment.id)).all()
        print(f"after sync:  post {post.id} (version {post.version}); comments "
              + ", ".join(f"{c.id} -> post {c.post_id}" for c in mine))
    for row in server_comments:
        print(f"server: comment {row['id']} -> post {row['postId']} "
              f"({server_posts[row['postId']]['title']!r}): {row['content']!r}")

    linked = (post.id > 0 and len(mine) == 2 and all(c.id > 0 and c.post_id == post.id
                                                     for c in mine)
              and sorted(r["postId"] for r in server_comments) == [1, post.id, post.id])
    print("children follow the parent's server id" if linked else "NOT LINKED")
    engine.dispose()
    return 0 if linked else 1


if __name__ == "__main__":
    sys.exit(main())
