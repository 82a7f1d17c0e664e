"""An offline-first command-line todo list built on sqla_sync.

Todos live in a local SQLite file and are synced with the reference backend's
``posts`` resource (``title`` is the text, ``body`` is ``"done"`` once done)::

    python -m examples.todo --db todo.db add "buy milk"          # works offline
    python -m examples.todo --db todo.db list
    python -m examples.todo --db todo.db done 3f2a               # an id or a unique prefix
    python -m examples.todo --db todo.db rm 3f2a
    python -m examples.todo --db todo.db --server http://127.0.0.1:8000 sync
    python -m examples.todo --db todo.db --server http://127.0.0.1:8000 status

Start a backend with ``python -m examples.server --port 8000``.  ``--db`` and
``--server`` default to ``$TODO_DB`` (else ``todo.db``) and ``$TODO_SERVER``.
Exit codes: 0 success, 1 the command failed (unknown id, server unreachable),
2 wrong usage.

Modules: :mod:`.models` (the ``Todo`` model and the database),
:mod:`.sync` (routes and sync configuration), :mod:`.cli` (the commands).
"""

from .cli import main
from .models import DONE, Todo, open_db
from .sync import make_sync, routes

__all__ = ["DONE", "Todo", "main", "make_sync", "open_db", "routes"]
