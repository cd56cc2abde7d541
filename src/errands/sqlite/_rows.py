"""Rows of the SQLite store as records, and back; rows that cannot be read.

A row can be unreadable when something other than errands wrote it (a hand edit, a
migration gone wrong, a build that knew another status): its JSON does not decode,
or its status is none of errands'. Such a row must not take down what reads it:
``get`` and ``jobs`` show it as failed with the reason, a claim fails it for good.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from .._record import JobRecord, JobStatus, utcnow
from ..local._store import ProcessInfo

Row = sqlite3.Row | Sequence[Any]

_STATUSES = ", ".join(status.value for status in JobStatus)


class Unreadable(ValueError):
    """A row that is not a job errands can read; the message says why."""


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def dumps(value: Any, empty: str) -> str:
    return json.dumps(value) if value else empty


def corrupt_error(reason: str) -> str:
    return f"CorruptJob: the stored job cannot be read: {reason}"


def _json(text: str | None, column: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise Unreadable(f"its {column} cannot be decoded as JSON ({exc})") from None


def record(row: Row) -> JobRecord:
    """The record of a row of ``COLUMNS``; ``Unreadable`` if it cannot be one."""
    (id, name, status, args, kwargs, attempts, max_attempts, result, error, trace, created_at,
     started_at, finished_at, run_at, after, owner, lease_until, lost, scheduled_at,
     priority, cancel_requested_at, traceparent,
     ) = row  # fmt: skip
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise Unreadable(f"its priority {priority!r} is not an int")
    try:
        state = JobStatus(status)
    except ValueError:
        raise Unreadable(f"its status {status!r} is none of {_STATUSES}") from None
    try:
        return JobRecord(
            id=id,
            name=name,
            status=state,
            args=_json(args, "arguments"),
            kwargs=_json(kwargs, "keyword arguments"),
            attempts=attempts,
            max_attempts=max_attempts,
            result=_json(result, "result"),
            error=error,
            traceback=trace,
            created_at=dt(created_at) or utcnow(),
            started_at=dt(started_at),
            finished_at=dt(finished_at),
            run_at=dt(run_at),
            durable=True,
            after=after,
            owner=owner,
            lease_until=dt(lease_until),
            lost=lost,
            scheduled_at=dt(scheduled_at),
            priority=priority,
            cancel_requested_at=dt(cancel_requested_at),
            traceparent=traceparent if isinstance(traceparent, str) else None,
        )
    except Unreadable:
        raise
    except (TypeError, ValueError, OverflowError, OSError) as exc:  # not a time a date holds
        raise Unreadable(f"a time in it is not a timestamp ({exc})") from None


def unreadable(row: Row, reason: str) -> JobRecord:
    """What readers see of a row that ``record`` refused: a failed job, saying why."""
    id, name = row[0], row[1]
    return JobRecord(
        id=str(id),
        name=str(name),
        status=JobStatus.FAILED,
        error=corrupt_error(reason),
        created_at=_time(row[10]) or utcnow(),
        finished_at=_time(row[12]),
        durable=True,
    )


def _time(value: Any) -> datetime | None:
    try:
        return dt(value)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def process_info(row: Row) -> ProcessInfo:
    id, role, host, pid, tasks, started_at, seen_at, stopped_at = row
    try:
        names = tuple(json.loads(tasks))
    except (ValueError, TypeError):
        names = ()
    return ProcessInfo(
        id=id,
        role=role,
        host=host,
        pid=pid,
        tasks=names,
        started_at=dt(started_at) or utcnow(),
        seen_at=dt(seen_at) or utcnow(),
        stopped_at=dt(stopped_at),
    )


class Unreadables:
    """What both SQL stores do with a row something other than errands wrote: it is
    read as a failed job with the reason (``unreadable``), and said once in the log."""

    KIND: ClassVar[str]  # "SQLite", "PostgreSQL": for the log line
    location: str
    _warned: set[str]  # the ids of unreadable rows already logged

    def _read_row(self, row: Row) -> JobRecord:
        try:
            return record(row)
        except Unreadable as exc:
            self._warn(row[0], str(exc), "listed as failed")
            return unreadable(row, str(exc))

    def _warn(self, id: Any, reason: str, outcome: str) -> None:
        key = str(id)
        if key not in self._warned:
            self._warned.add(key)
            logging.getLogger("errands").warning(
                "the job %s in the %s store %s cannot be read (%s); it is %s",
                key,
                self.KIND,
                self.location,
                reason,
                outcome,
            )
