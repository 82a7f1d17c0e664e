"""What to do with an answer: success, conflict, retry later, or give up.

408, 425, 429, 5xx, connection errors, timeouts and unreadable answers are
retried with exponential backoff and full jitter, capped; ``Retry-After``
(seconds or an HTTP date) is honoured.  Any other 4xx is a dead letter at
once; so is an op out of retries.  The attempt count and the next attempt
time live in the outbox row, so a restarted process continues the schedule.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import random
from collections.abc import Callable
from typing import Literal

from .errors import ConfigurationError

__all__ = [
    "RETRYABLE_STATUSES",
    "Errors",
    "Verdict",
    "classify",
    "parse_retry_after",
    "retry_delay",
]

#: Statuses that mean "try again later".
RETRYABLE_STATUSES = frozenset({408, 425, 429})

Verdict = Literal["ok", "conflict", "retry", "dead", "auth"]


def _default_delay(attempt: int) -> float:
    return float(min(2**attempt, 60))


@dataclasses.dataclass(frozen=True)
class Errors:
    """Retry policy of pushed ops.

    :param max_retries: retries after the first attempt before an op becomes a
        dead letter.
    :param retry_delay: ``attempt -> seconds``, the upper bound of the delay
        before retry ``attempt`` (1, 2, ...); by default ``min(2**attempt, 60)``.
    :param jitter: draw the delay uniformly from ``[0, retry_delay(attempt)]``
        ("full jitter"), so that many clients do not retry in step.
    :param max_retry_after: cap on a server's ``Retry-After``, in seconds.
    """

    max_retries: int = 5
    retry_delay: Callable[[int], float] = _default_delay
    jitter: bool = True
    max_retry_after: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise ConfigurationError(
                f"Errors(max_retries={self.max_retries!r}): give the number of retries after "
                "the first attempt, an int >= 0 (0: dead-letter at the first failure)"
            )
        if not callable(self.retry_delay):
            raise ConfigurationError(
                f"Errors(retry_delay={self.retry_delay!r}) must be a callable attempt -> "
                "seconds, e.g. lambda attempt: min(2 ** attempt, 60)"
            )
        if not self.max_retry_after >= 0:
            raise ConfigurationError(
                f"Errors(max_retry_after={self.max_retry_after!r}) must be seconds >= 0"
            )


def classify(status: int, *, conflict: bool) -> Verdict:
    """The verdict on an HTTP status; ``conflict`` is the route's ``conflict_when``."""
    if 200 <= status < 300:
        return "ok"
    if conflict:
        return "conflict"
    if status == 401:
        return "auth"
    if status in RETRYABLE_STATUSES or status >= 500:
        return "retry"
    return "dead"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²": isdigit() takes it, float() does not
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError):
        return None


def retry_delay(
    errors: Errors, attempt: int, rng: random.Random, retry_after: float | None = None
) -> float:
    """Seconds before retry ``attempt``: jittered backoff, at least ``Retry-After``."""
    bound = max(0.0, float(errors.retry_delay(attempt)))
    delay = rng.uniform(0.0, bound) if errors.jitter else bound
    if retry_after is not None:
        delay = max(delay, min(retry_after, errors.max_retry_after))
    return delay
