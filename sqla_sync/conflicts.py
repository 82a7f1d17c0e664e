"""Conflicts: a row changed both locally (pending op) and on the server.

Policies: ``server-wins`` (default), ``client-wins``, ``lww`` (last writer
wins by time), ``merge`` (field-level three-way merge with the shadow as base)
and ``custom`` (a callable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .errors import ConfigurationError

__all__ = ["Conflict", "Conflicts", "Policy"]

Policy = Literal["server-wins", "client-wins", "lww", "merge", "custom"]
_POLICIES = ("server-wins", "client-wins", "lww", "merge", "custom")


@dataclasses.dataclass(frozen=True)
class Conflict:
    """One conflict, as handed to a custom resolver and the ``conflict`` event.

    :ivar local: the local row (server field names), None if deleted locally.
    :ivar remote: the server's row, None if deleted on the server.
    :ivar base: the last known server state (shadow), None if unknown.
    """

    table: str
    key: Any
    local: Mapping[str, Any] | None
    remote: Mapping[str, Any] | None
    base: Mapping[str, Any] | None
    local_changed_at: float
    resolution: str = ""


@dataclasses.dataclass(frozen=True)
class Conflicts:
    """Conflict policy.

    :param policy: one of server-wins, client-wins, lww, merge, custom.
    :param resolve: for ``custom``: ``Conflict -> "local" | "remote" | dict``.
    :param merge_fallback: for ``merge``: the policy for a field both sides changed.
    """

    policy: Policy = "server-wins"
    resolve: Callable[[Conflict], Any] | None = None
    merge_fallback: Policy = "server-wins"

    def __post_init__(self) -> None:
        if self.policy not in _POLICIES:
            raise ConfigurationError(
                f"Conflicts(policy={self.policy!r}) is not one of {', '.join(_POLICIES)}"
            )
        if self.policy == "custom" and self.resolve is None:
            raise ConfigurationError("Conflicts(policy='custom') needs resolve=callable")
        if self.merge_fallback in ("merge", "custom"):
            raise ConfigurationError("merge_fallback must be server-wins, client-wins or lww")
