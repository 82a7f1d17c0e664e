"""Models the tests write through the ORM."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, LargeBinary, Numeric, String, Uuid
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqla_sync import Syncable


class Base(DeclarativeBase):
    pass


class Post(Syncable, Base):
    __tablename__ = "posts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000), default="")
    comments: Mapped[list[Comment]] = relationship(back_populates="post")


class Comment(Syncable, Base):
    __tablename__ = "comments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    post_id: Mapped[str] = mapped_column(ForeignKey("posts.id"))
    content: Mapped[str] = mapped_column(String(2000))
    post: Mapped[Post] = relationship(back_populates="comments")


class Tenanted(Syncable, Base):
    """A composite primary key."""

    __tablename__ = "tenanted"
    tenant: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(100))


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Typed(Syncable, Base):
    """One column of every type whose values must round-trip exactly."""

    __tablename__ = "typed"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    naive: Mapped[dt.datetime | None]
    aware: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    day: Mapped[dt.date | None]
    clock: Mapped[dt.time | None]
    amount: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 4))
    uid: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    color: Mapped[Color | None] = mapped_column(SAEnum(Color))
    doc: Mapped[Any] = mapped_column(JSON, nullable=True)
    flag: Mapped[bool | None]
    ratio: Mapped[float | None]
    note: Mapped[str | None] = mapped_column(String(100))


class Local(Base):
    """A model that is not synced: never captured."""

    __tablename__ = "local_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


class Article(Syncable, Base):
    """Client-generated ids; pushed to the backend's /api/posts."""

    __tablename__ = "articles"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(String(2000), default=None)
    updated_at: Mapped[str | None] = mapped_column(String(40), default=None)
    version: Mapped[int | None] = mapped_column(default=None)


class Remark(Syncable, Base):
    """A child of Article; pushed to /api/comments."""

    __tablename__ = "remarks"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    article_id: Mapped[str] = mapped_column(ForeignKey("articles.id"))
    content: Mapped[str] = mapped_column(String(2000))


class Ledger(Syncable, Base):
    """Server-assigned ids: created offline with a negative temporary id."""

    __tablename__ = "ledgers"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(200))
    version: Mapped[int | None] = mapped_column(default=None)


class Entry(Syncable, Base):
    """A child of Ledger whose foreign key must follow the parent's server id."""

    __tablename__ = "entries"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    ledger_id: Mapped[int] = mapped_column(ForeignKey("ledgers.id"))
    content: Mapped[str] = mapped_column(String(2000))
