"""Alembic environment of the application (``alembic.ini`` next to this file).

``target_metadata`` is the application's own ``MetaData``; autogenerate
ignores the ``sqla_sync_*`` tables, which belong to the library's revision
branch (``sqla_sync.migrations:versions`` in ``version_locations``), so
``alembic revision --autogenerate`` never proposes to drop them.

The database URL is ``-x url=...``, else ``$APP_DATABASE_URL``, else
``sqlalchemy.url`` of ``alembic.ini``.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from pathlib import Path
from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

sys.path.insert(0, str(Path(__file__).resolve().parent))  # app_models lives next to us

from app_models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

#: Prefix of the tables the sqla_sync branch owns.
SYNC_PREFIX = "sqla_sync_"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave the library's tables to the library's migrations."""
    return not (type_ == "table" and name is not None and name.startswith(SYNC_PREFIX))


def database_url() -> str:
    """``-x url=...``, else ``$APP_DATABASE_URL``, else ``sqlalchemy.url``."""
    url = context.get_x_argument(as_dictionary=True).get("url") \
        or os.environ.get("APP_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=..., set APP_DATABASE_URL "
                         "or sqlalchemy.url in alembic.ini")
    return url


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(url=database_url(), target_metadata=target_metadata,
                      include_name=include_name, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection (one passed in ``config.attributes`` wins)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          include_name=include_name, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = database_url()
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata,
                          include_name=include_name, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
