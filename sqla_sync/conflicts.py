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


Decision = tuple[str, "dict[str, Any] | None"]


def _lww(local_time: float, remote_time: float | None) -> str:
    # A tie (or an unknown server time) goes to the server, every time.
    if remote_time is not None and local_time > remote_time:
        return "local"
    return "remote"


def _simple(policy: str, local_time: float, remote_time: float | None) -> str:
    if policy == "client-wins":
        return "local"
    if policy == "lww":
        return _lww(local_time, remote_time)
    return "remote"


def decide(
    conflicts: Conflicts,
    conflict: Conflict,
    keys: tuple[str, ...],
    local: Mapping[str, Any] | None,
    remote: Mapping[str, Any] | None,
    base: Mapping[str, Any] | None,
    remote_time: float | None,
    from_server: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> Decision:
    """Which side wins a conflict: ``("remote", None)``, ``("local", None)`` or
    ``("merged", column values)``.

    ``local``, ``remote`` and ``base`` are column values (None for a deleted
    row); ``keys`` are the synced column keys; ``from_server`` turns a custom
    resolver's dict (server field names) into column values.
    """
    policy = conflicts.policy
    if policy in ("server-wins", "client-wins", "lww"):
        return _simple(policy, conflict.local_changed_at, remote_time), None
    if policy == "custom":
        assert conflicts.resolve is not None
        answer = conflicts.resolve(conflict)
        if answer in ("local", "remote"):
            return str(answer), None
        if isinstance(answer, Mapping):
            return "merged", from_server(answer)
        raise ConfigurationError(
            f"the custom conflict resolver returned {answer!r}; return 'local', 'remote' "
            "or a dict of the merged row"
        )
    # merge: field by field against the base.
    fallback = conflicts.merge_fallback
    if local is None or remote is None:
        return _simple(fallback, conflict.local_changed_at, remote_time), None
    merged: dict[str, Any] = {}
    for key in keys:
        mine, theirs = local.get(key), remote.get(key)
        was = base.get(key) if base is not None else None
        if mine == theirs or (base is not None and mine == was):
            merged[key] = theirs
        elif base is not None and theirs == was:
            merged[key] = mine
        else:
            side = _simple(fallback, conflict.local_changed_at, remote_time)
            merged[key] = mine if side == "local" else theirs
    if all(merged.get(k) == remote.get(k) for k in keys):
        return "remote", None
    return "merged", merged
