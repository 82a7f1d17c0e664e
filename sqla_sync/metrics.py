"""Counters of one engine, a snapshot of them, and a Prometheus text exposition."""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["Metrics", "MetricsRecorder"]


@dataclasses.dataclass(frozen=True)
class Metrics:
    """A snapshot of an engine's counters (totals since it started).

    :ivar conflicts: conflicts by resolution ("remote", "local", "merged").
    :ivar requests: HTTP answers by status class ("2xx", "4xx", ...; "error"
        for no answer).
    :ivar last_success: epoch seconds of the last successful pull or push per table.
    :ivar latency_p50: median request latency in seconds (None before any).
    """

    pushed: int
    pulled: int
    conflicts: Mapping[str, int]
    retries: int
    dead_letters: int
    auth_refreshes: int
    requests: Mapping[str, int]
    queue_depth: int
    oldest_pending_age: float | None
    last_success: Mapping[str, float]
    latency_p50: float | None
    latency_p95: float | None

    def to_prometheus(self, prefix: str = "sqla_sync") -> str:
        """The snapshot in the Prometheus text exposition format."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {prefix}_{name} {help_}")
            lines.append(f"# TYPE {prefix}_{name} {kind}")
            for labels, value in samples:
                lines.append(f"{prefix}_{name}{labels} {value:g}")

        metric("pushed_total", "counter", "Ops the server applied.", [("", self.pushed)])
        metric("pulled_total", "counter", "Rows written from the server.", [("", self.pulled)])
        metric("conflicts_total", "counter", "Conflicts by resolution.",
               [(f'{{resolution="{k}"}}', v) for k, v in sorted(self.conflicts.items())])
        metric("retries_total", "counter", "Ops rescheduled after a failure.",
               [("", self.retries)])
        metric("dead_letters_total", "counter", "Ops given up on.", [("", self.dead_letters)])
        metric("auth_refreshes_total", "counter", "Credential refreshes.",
               [("", self.auth_refreshes)])
        metric("requests_total", "counter", "HTTP answers by status class.",
               [(f'{{status="{k}"}}', v) for k, v in sorted(self.requests.items())])
        metric("queue_depth", "gauge", "Pending ops.", [("", self.queue_depth)])
        if self.oldest_pending_age is not None:
            metric("oldest_pending_age_seconds", "gauge", "Age of the oldest pending op.",
                   [("", self.oldest_pending_age)])
        metric("last_success_timestamp_seconds", "gauge", "Last successful sync per table.",
               [(f'{{table="{k}"}}', v) for k, v in sorted(self.last_success.items())])
        for q, value in (("0.5", self.latency_p50), ("0.95", self.latency_p95)):
            if value is not None:
                metric(f"request_latency_seconds_p{q[2:]}", "gauge",
                       f"Request latency quantile {q}.", [("", value)])
        return "\n".join(lines) + "\n"


class MetricsRecorder:
    """Thread-safe counters an engine updates as it works."""

    def __init__(self, latency_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self.pushed = 0
        self.pulled = 0
        self.retries = 0
        self.dead_letters = 0
        self.conflicts: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.last_success: dict[str, float] = {}
        self._latencies: deque[float] = deque(maxlen=latency_window)

    def add(self, **counts: int) -> None:
        """Add to the plain counters (pushed, pulled, retries, dead_letters)."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def conflict(self, resolution: str) -> None:
        """Count one conflict by its resolution."""
        with self._lock:
            self.conflicts[resolution] = self.conflicts.get(resolution, 0) + 1

    def request(self, status: int | None, seconds: float | None) -> None:
        """Count one request by status class, and its latency."""
        key = "error" if status is None else f"{status // 100}xx"
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is not None:
                self._latencies.append(seconds)

    def success(self, tables: Any, when: float) -> None:
        """Record a successful pull or push of ``tables``."""
        with self._lock:
            for table in tables:
                self.last_success[table] = when

    def snapshot(self, *, queue_depth: int, oldest_pending_age: float | None,
                 auth_refreshes: int) -> Metrics:
        """A frozen copy of the counters, with the queue figures given."""
        with self._lock:
            latencies = sorted(self._latencies)
            return Metrics(
                pushed=self.pushed, pulled=self.pulled, conflicts=dict(self.conflicts),
                retries=self.retries, dead_letters=self.dead_letters,
                auth_refreshes=auth_refreshes, requests=dict(self.requests),
                queue_depth=queue_depth, oldest_pending_age=oldest_pending_age,
                last_success=dict(self.last_success),
                latency_p50=_quantile(latencies, 0.5), latency_p95=_quantile(latencies, 0.95),
            )


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]
