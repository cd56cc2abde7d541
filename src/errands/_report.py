"""What the command line and the dashboard share: jobs and stats as JSON holds them
(what ``errands ... --json`` prints and the dashboard's ``/api`` answers), and
durations as an operator types them (``30s``, ``15m``, ``2h``, ``7d``)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from ._record import JobStatus, utcnow
from ._stats import Stats

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def first_line(text: str | None) -> str:
    """An error's first line (``""`` for none), for a row of a table."""
    return "" if not text else text.splitlines()[0]


def duration(value: str) -> float:
    """Seconds in ``"30s"``, ``"15m"``, ``"2h"``, ``"7d"``; ValueError saying so else."""
    found = _DURATION.match(value)
    if found is None:
        raise ValueError(f"expected a number and a unit (30s, 15m, 2h, 7d), got {value[:40]!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def plain(value: Any) -> Any:
    """A value as JSON holds it: times in ISO 8601 UTC, enums by their value."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def stats_object(found: Stats) -> dict[str, Any]:
    """``Stats`` as one JSON object (to go through ``plain``): ``counts`` has every
    status; ages and run times in seconds; ``timeline`` the last hour by minute."""
    activity = found.activity
    oldest = activity.oldest_queued
    return {
        "counts": {status.value: found.counts.get(status, 0) for status in JobStatus},
        "tasks": {
            name: {status.value: n for status, n in counts.items()}
            for name, counts in sorted(found.tasks.items())
        },
        "oldest_queued_age_s": None
        if oldest is None
        else round((utcnow() - oldest).total_seconds(), 3),
        "finished_per_minute": {
            f"{minutes}m": round(n / minutes, 2) for minutes, n in activity.finished.items()
        },
        "run_times_s": {
            name: {"jobs": t.count, "p50": round(t.p50, 6), "p95": round(t.p95, 6)}
            for name, t in sorted(activity.run_times.items())
        },
        "failed_last_hour": dict(sorted(activity.failing.items())),
        "unrunnable": found.unrunnable,
        "workers": found.workers,
        "timeline": activity.timeline,
    }
