"""The alembic revision branch ``sqla_sync`` that creates the library's tables.

Installed as the package ``sqla_sync.migrations``; point alembic at it with
``version_locations = ... sqla_sync.migrations:versions``.
"""

from pathlib import Path

#: The folder holding the revision files, for programmatic alembic configs.
VERSIONS_DIR = Path(__file__).parent / "versions"
