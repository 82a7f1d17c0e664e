"""Fault switch for the reference backend.

Tests drive the backend into the failures a real network and a real API produce
(5xx/429 answers, slow answers, dropped connections, answers that arrive broken)
so that the sync library's retry, idempotency and error handling can be checked
against a real socket instead of mocks.

A rule is a plain dict, the same shape over HTTP (``POST /__admin/faults``) and in
Python (:meth:`Faults.set_rules` / :meth:`Faults.add`)::

    {"method": "POST" | None, "path": "<prefix of the raw path>" | None,
     "times": 1, "skip": 0, "action": "status", "status": 503,
     "headers": {"Retry-After": "2"}, "body": {"error": "injected"}}

Rules are checked in order on every ``/api`` request; the first one that matches and
fires decides the request's fate. ``skip`` lets the first K matching requests through
that rule, ``times`` counts how often it fires (-1 = forever).

A rule may instead carry ``"random": {"seed": 1, "rate": 0.2, "actions": [...]}``:
each matching request then draws from its own seeded generator, and with probability
``rate`` fires one of ``actions`` (``"status:503"``, ``"status:429:2"`` = 429 with
``Retry-After: 2``, ``"delay:300"``, ``"drop_before"``, ``"drop_after_commit"``,
``"malformed"``, ``"truncated"``, ``"wrong_type"``). The same seed and request order give
the same faults, so a failing fault-soup run can be replayed.

This module knows nothing about HTTP frameworks: :meth:`Faults.pick` returns a
:class:`FaultAction` and the caller (``examples.server.api``) carries it out.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Actions answered without doing the work.
BEFORE_WORK_ACTIONS = ("status", "drop_before")
#: Actions that do the work (commit) and then spoil the answer.
AFTER_WORK_ACTIONS = ("drop_after_commit", "malformed", "truncated", "wrong_type")
#: Every action name a rule may use.
ACTIONS = ("status", "delay", "drop_before", "drop_after_commit", "malformed", "truncated",
           "wrong_type")

_RULE_KEYS = frozenset(
    {"method", "path", "times", "skip", "action", "status", "headers", "body", "ms", "random"}
)
_DEFAULT_BODY: Any = {"error": "injected"}


@dataclass(frozen=True)
class FaultAction:
    """One fault to apply to one request.

    ``status``/``headers``/``body`` are used by the ``status`` action, ``ms`` by ``delay``.
    """

    name: str
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = field(default_factory=lambda: dict(_DEFAULT_BODY))
    ms: int = 0

    def describe(self) -> str:
        """Short label used in the request log and the injection history."""
        if self.name == "status":
            return f"status:{self.status}"
        if self.name == "delay":
            return f"delay:{self.ms}"
        return self.name


def _parse_action(rule: Mapping[str, Any]) -> FaultAction:
    """Build the :class:`FaultAction` of a plain (non-random) rule, validating it."""
    name = rule.get("action")
    if name not in ACTIONS:
        raise ValueError(f"unknown fault action {name!r}; expected one of {ACTIONS}")
    headers = rule.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ValueError("fault 'headers' must be an object")
    status = rule.get("status", 503)
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("fault 'status' must be an HTTP status code")
    ms = rule.get("ms", 0)
    if not isinstance(ms, (int, float)) or ms < 0:
        raise ValueError("fault 'ms' must be a non-negative number")
    body = rule["body"] if "body" in rule else dict(_DEFAULT_BODY)
    return FaultAction(
        name=str(name),
        status=status,
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        body=body,
        ms=int(ms),
    )


def parse_action_spec(spec: str) -> FaultAction:
    """Parse a random-mode action string such as ``"status:429:2"`` or ``"delay:300"``."""
    parts = spec.split(":")
    name = parts[0]
    if name == "status":
        if len(parts) not in (2, 3):
            raise ValueError(f"bad fault spec {spec!r}; use status:CODE[:RETRY_AFTER]")
        headers: dict[str, str] = {}
        if len(parts) == 3:
            headers["Retry-After"] = parts[2]
        return _parse_action({"action": "status", "status": int(parts[1]), "headers": headers})
    if name == "delay":
        if len(parts) != 2:
            raise ValueError(f"bad fault spec {spec!r}; use delay:MS")
        return _parse_action({"action": "delay", "ms": int(parts[1])})
    if len(parts) != 1:
        raise ValueError(f"bad fault spec {spec!r}")
    return _parse_action({"action": name})


class _RandomSpec:
    """Seeded generator of faults for one random rule."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping):
            raise ValueError("'random' must be an object")
        self.seed = spec.get("seed", 0)
        self.rate = float(spec.get("rate", 0.1))
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("random 'rate' must be within [0, 1]")
        specs = spec.get("actions") or ["status:503"]
        if isinstance(specs, str) or not isinstance(specs, Iterable):
            raise ValueError("random 'actions' must be a list of strings")
        self.specs = [str(s) for s in specs]
        self.actions = [parse_action_spec(s) for s in self.specs]
        self._rng = random.Random(self.seed)

    def draw(self) -> FaultAction | None:
        """Return the fault for the next matching request, or None to let it through."""
        if self._rng.random() >= self.rate:
            return None
        return self._rng.choice(self.actions)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view for ``GET /__admin/faults``."""
        return {"seed": self.seed, "rate": self.rate, "actions": list(self.specs)}


class _Rule:
    """A parsed rule with its remaining ``times``/``skip`` counters."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        if not isinstance(raw, Mapping):
            raise ValueError("a fault rule must be an object")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        method = raw.get("method")
        if isinstance(method, str):
            self.methods: frozenset[str] | None = frozenset({method.upper()})
        elif method is None:
            self.methods = None
        else:
            self.methods = frozenset(str(m).upper() for m in method)
        path = raw.get("path")
        self.path: str | None = None if path is None else str(path)
        self.random: _RandomSpec | None = None
        self.action: FaultAction | None = None
        if "random" in raw:
            self.random = _RandomSpec(raw["random"])
            default_times = -1
        else:
            self.action = _parse_action(raw)
            default_times = 1
        self.times = int(raw.get("times", default_times))
        self.skip = int(raw.get("skip", 0))
        self.fired = 0

    def matches(self, method: str, path: str) -> bool:
        """True when the request's method and raw path fall under this rule."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.path is None or path.startswith(self.path)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view with the remaining counters."""
        out: dict[str, Any] = {
            "method": sorted(self.methods) if self.methods is not None else None,
            "path": self.path,
            "times": self.times,
            "skip": self.skip,
            "fired": self.fired,
        }
        if self.random is not None:
            out["random"] = self.random.as_dict()
        elif self.action is not None:
            out.update(
                action=self.action.name,
                status=self.action.status,
                headers=dict(self.action.headers),
                body=self.action.body,
                ms=self.action.ms,
            )
        return out


class Faults:
    """Thread-safe list of fault rules plus a history of the faults injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._history: list[dict[str, Any]] = []

    def set_rules(self, rules: Iterable[Mapping[str, Any]]) -> None:
        """Replace all rules. Raises ValueError (and keeps the old rules) if one is invalid."""
        parsed = [_Rule(r) for r in rules]
        with self._lock:
            self._rules = parsed

    def add(self, rule: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Append one rule, given as a dict and/or keyword arguments.

        Example: ``faults.add(method="POST", path="/api/posts", action="status",
        status=429, headers={"Retry-After": "1"}, times=2)``.
        """
        parsed = _Rule({**(rule or {}), **fields})
        with self._lock:
            self._rules.append(parsed)

    def clear(self) -> None:
        """Remove every rule and forget the injection history."""
        with self._lock:
            self._rules = []
            self._history = []

    def rules(self) -> list[dict[str, Any]]:
        """Current rules with their remaining ``times``/``skip`` and ``fired`` counts."""
        with self._lock:
            return [r.as_dict() for r in self._rules]

    def injected(self) -> list[dict[str, Any]]:
        """Every fault fired so far: ``{"method", "path", "fault"}`` in firing order."""
        with self._lock:
            return [dict(h) for h in self._history]

    def pick(self, method: str, path: str) -> FaultAction | None:
        """Decide the fault for one request (consuming ``skip``/``times``), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.times == 0 or not rule.matches(method, path):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                action = rule.random.draw() if rule.random is not None else rule.action
                if action is None:
                    continue
                if rule.times > 0:
                    rule.times -= 1
                rule.fired += 1
                self._history.append(
                    {"method": method, "path": path, "fault": action.describe()}
                )
                return action
        return None
