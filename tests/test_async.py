"""AsyncSession and async_sessionmaker capture the same way, through their sync session class."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from sqla_sync import ConfigurationError, UntrackedSessionError, track, untrack
from sqla_sync.outbox import pending_ops
from tests.conftest import MARIADB_URL, POSTGRES_URL
from tests.models import Post


def async_url(engine: Engine, tmp_path: Path) -> str:
    name = engine.dialect.name
    if name == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'local.db'}"
    if name == "postgresql":
        return POSTGRES_URL  # psycopg 3 drives both sync and async engines
    return MARIADB_URL.replace("+pymysql", "+aiomysql")


def test_async_sessionmaker_is_tracked(engine: Engine, tmp_path: Path) -> None:
    async def main() -> None:
        aengine = create_async_engine(async_url(engine, tmp_path))
        maker = async_sessionmaker(aengine)
        track(maker)
        async with maker() as s:
            s.add(Post(id="a1", title="from asyncio"))
            await s.commit()
            await s.execute(select(Post))
        untrack(maker)
        async with maker() as s:
            s.add(Post(id="a2", title="untracked now"))
            with pytest.raises(UntrackedSessionError):
                await s.commit()
        await aengine.dispose()

    asyncio.run(main())
    with engine.connect() as conn:
        assert [(op.row_key, op.op) for op in pending_ops(conn)] == [('["a1"]', "insert")]


def test_async_session_instance_is_tracked(engine: Engine, tmp_path: Path) -> None:
    async def main() -> None:
        aengine = create_async_engine(async_url(engine, tmp_path))
        async with AsyncSession(aengine) as s:
            track(s)
            s.add(Post(id="a1", title="t"))
            await s.commit()
        await aengine.dispose()

    asyncio.run(main())
    with engine.connect() as conn:
        assert len(pending_ops(conn)) == 1


def test_tracking_asyncsession_itself_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="async_sessionmaker"):
        track(AsyncSession)
