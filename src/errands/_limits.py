"""Task-level limits: ``@errands.task(concurrency=N, rate="10/s")``, the same across
every worker and process on a store.

A store applies them when it claims (the claim is one transaction): a task at its
``concurrency`` has no more of its jobs claimed until one of its running jobs ends,
and a task with a ``rate`` has an attempt claimed only when its token bucket, kept in
the store, holds a token. The bucket refills at the rate and holds at most ``burst``
tokens: a tenth of a second's worth, and at least one, so attempts start evenly
spread, never a period's quota at once. Jobs held back stay ``queued`` and take no
worker slot; other tasks' jobs are claimed past them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .exceptions import ConfigurationError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I)
_PERIOD = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Limit:
    """A task's limits: at most ``concurrency`` jobs running at once, at most ``rate``
    attempts started a second (None: no such limit)."""

    concurrency: int | None = None
    rate: float | None = None

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds: a tenth of a second's worth, at least one."""
        assert self.rate is not None
        return max(1.0, self.rate / 10)

    def refill(self, tokens: float, updated: float, now: float) -> float:
        """The bucket's tokens at ``now`` (timestamps), from ``tokens`` at ``updated``."""
        assert self.rate is not None
        return min(self.burst, tokens + max(0.0, now - updated) * self.rate)

    def allowed(self, running: int, tokens: float | None) -> int:
        """How many more jobs may start now, given how many run and the bucket's tokens
        (None: no bucket yet, full); a large number when nothing limits it."""
        most = 1 << 30
        if self.concurrency is not None:
            most = min(most, max(0, self.concurrency - running))
        if self.rate is not None:
            most = min(most, math.floor(self.burst if tokens is None else tokens))
        return most


def allowances(
    limited: Mapping[str, Limit],
    running: Mapping[str, int],
    buckets: Mapping[str, tuple[float, float]],
    now: float,
) -> tuple[dict[str, int], dict[str, float | None]]:
    """For a store that keeps buckets as rows: how many more jobs of each limited name
    may start now, given how many run and each bucket's ``(tokens, updated)``; and the
    tokens of each bucket now (None: no bucket yet: full)."""
    tokens: dict[str, float | None] = {}
    allowed = {}
    for name, limit in limited.items():
        bucket = buckets.get(name)
        tokens[name] = limit.refill(*bucket, now) if limit.rate is not None and bucket else None
        allowed[name] = limit.allowed(running.get(name, 0), tokens[name])
    return allowed, tokens


def spent(limit: Limit, tokens: float | None, taken: int) -> float:
    """The bucket's tokens once ``taken`` attempts took theirs (None: it was full)."""
    return (limit.burst if tokens is None else tokens) - taken


def check_limit(name: str, concurrency: object, rate: object) -> Limit | None:
    """The limits given to ``@errands.task``, or an error naming the valid forms."""
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigurationError(
            f"task {name!r}: concurrency must be an int >= 1 (how many of its jobs may run "
            f"at once across all workers), or None for no limit, got {concurrency!r}"
        )
    per_second = None if rate is None else parse_rate(name, rate)
    if concurrency is None and per_second is None:
        return None
    return Limit(concurrency, per_second)


def parse_rate(name: str, rate: object) -> float:
    """``"10/s"``, ``"100/m"``, ``"1000/h"`` as attempts a second."""
    found = _RATE.match(rate) if isinstance(rate, str) else None
    if found is None or float(found.group(1)) <= 0:
        raise ConfigurationError(
            f"task {name!r}: rate must be a str like '10/s', '100/m' or '1000/h' (attempts "
            f"started per second, minute or hour, more than 0), got {rate!r}"
        )
    return float(found.group(1)) / _PERIOD[found.group(2).lower()]
