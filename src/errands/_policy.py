"""How a registered task is retried and bounded in time: policy as data."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._tuning import MAX_BACKOFF, MAX_SECONDS
from .exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class Policy:
    """``retries`` further attempts after the first, exponential backoff with full
    jitter from a base of ``backoff`` seconds, and a ``timeout`` per attempt."""

    retries: int = 0
    backoff: float = 1.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, got {self.retries!r}")
        if not is_seconds(self.backoff) or self.backoff < 0:
            raise ConfigurationError(
                f"backoff must be a finite number of seconds >= 0, got {self.backoff!r}"
            )
        if self.timeout is not None and (not is_seconds(self.timeout) or self.timeout <= 0):
            raise ConfigurationError(
                f"timeout must be a finite number of seconds > 0 (at most {MAX_SECONDS:,}), "
                f"or None for no limit, got {self.timeout!r}"
            )

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay_before_retry(self, attempts: int) -> float | None:
        """Seconds to wait before the next attempt, or None when none is left.

        Full jitter (uniform in ``[0, backoff * 2**(attempts-1)]``) spreads retries of
        many jobs that failed together, so they do not come back together.
        """
        if attempts >= self.max_attempts:
            return None
        ceiling = min(MAX_BACKOFF, self.backoff * 2 ** (attempts - 1))
        return random.uniform(0, ceiling)


def is_seconds(value: object) -> bool:
    """A duration a date can hold: a finite int or float of at most ``MAX_SECONDS``
    either way (a bool is no duration)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= MAX_SECONDS
    )
