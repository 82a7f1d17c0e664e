"""The library's blinker signals, in one :class:`blinker.Namespace`.

Each signal carries the :class:`~sqla_sync.SyncEngine` (or, for
``outbox_committed``, the session) as sender and keyword payloads.  Receivers'
exceptions propagate, so the library sends outside database transactions.
:meth:`SyncEngine.on` subscribes under the original hyphenated names.
"""

from __future__ import annotations

from blinker import NamedSignal, Namespace

__all__ = ["EVENT_NAMES", "namespace", "outbox_committed", "signal_for"]

namespace = Namespace()

_DOCS = {
    "sync-start": "A sync (pull then push) started.",
    "sync-complete": "A sync finished; payload ``result``.",
    "sync-error": "A sync failed; payload ``error``.",
    "push-start": "A push started.",
    "push-complete": "A push finished; payload ``result``.",
    "push-error": "A push failed; payload ``error``.",
    "pull-start": "A pull started.",
    "pull-complete": "A pull finished; payload ``result``.",
    "pull-error": "A pull failed; payload ``error``.",
    "conflict": "A conflict was detected and resolved; payload ``conflict``.",
    "online": "The server answers again.",
    "offline": "The server stopped answering; payload ``error``.",
    "metrics": "A metrics snapshot; payload ``metrics``.",
    "dead-letter": "An op was given up on; payload ``dead_letter``.",
    "auth-required": "Authentication failed after refreshes; push is paused.",
}

#: The original event names, as accepted by ``SyncEngine.on``.
EVENT_NAMES = tuple(_DOCS)

for _name, _doc in _DOCS.items():
    namespace.signal(_name, doc=_doc)

#: Sent by a tracked session after a commit that wrote outbox ops; payload
#: ``tables`` (a frozenset of table names).  The engine's on-commit trigger
#: listens to it.
outbox_committed: NamedSignal = namespace.signal(
    "outbox-committed", doc="A tracked session committed new outbox ops."
)


def signal_for(name: str) -> NamedSignal:
    """The signal of an original event name; ValueError for an unknown one."""
    if name not in _DOCS:
        raise ValueError(f"unknown event {name!r}; known events: {', '.join(EVENT_NAMES)}")
    return namespace.signal(name)
