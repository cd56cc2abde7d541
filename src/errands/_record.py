"""The job record: what a store keeps about one unit of background work."""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    """Where a job is in its life. ``str`` so it compares and serialises as its value."""

    #: Waiting to start: not yet released by its request, not yet due, waiting for the
    #: job added before it in the same request, or waiting for a retry.
    QUEUED = "queued"
    #: An attempt is running now.
    RUNNING = "running"
    #: An attempt returned; ``result`` holds what it returned.
    SUCCEEDED = "succeeded"
    #: The last allowed attempt raised or timed out; ``error`` and ``traceback`` say why.
    FAILED = "failed"
    #: Dropped before it ran, e.g. because the endpoint that added it raised.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the final states: succeeded, failed and cancelled."""
        return self in _FINISHED

    @classmethod
    def of(cls, value: JobStatus | str) -> JobStatus:
        """The status named by ``value`` (a ``JobStatus`` or its value, ``"failed"``);
        ``ValueError`` naming the valid values for anything else."""
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        valid = ", ".join(repr(status.value) for status in cls)
        raise ValueError(f"{value!r} is not a job status; use one of {valid}")


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def finished_statuses(values: Iterable[JobStatus | str] | None) -> list[JobStatus] | None:
    """The final statuses named by ``values`` (what a purge may delete), None for all
    of them; ``ValueError`` for a name that is no status or one that is not final."""
    if values is None:
        return None
    statuses = [JobStatus.of(value) for value in values]
    unfinished = [status.value for status in statuses if not status.finished]
    if unfinished:
        raise ValueError(
            f"purge deletes finished jobs only, not {', '.join(unfinished)} ones (it may "
            f"delete succeeded, failed and cancelled ones)"
        )
    return statuses


#: The time now, aware (UTC). A partial, not a function: no Python frame a call, and a
#: job takes several.
utcnow: Callable[[], datetime] = functools.partial(datetime.now, UTC)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``("Type: message", "full traceback")``, as a job records a failed attempt.

    Always storable: text no store can hold (a lone surrogate, from ``os.fsdecode``
    of bytes that are not UTF-8) is escaped, so recording a failure cannot fail.
    """
    message = str(exc)
    error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return storable(error), storable("".join(traceback.format_exception(exc)))


def storable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\udcff``); as it is otherwise."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def new_job_id() -> str:
    """32 hex digits: the creation time in ms (12), then 80 random bits (20).

    Ids sort by creation time, and a store that keeps no creation time of its own
    (Celery's result backend) can tell it from the id.
    """
    random = next(_random_hex, None) or _more_random_hex()
    return f"{time.time_ns() // 1_000_000:012x}{random}"


#: 80 random bits at a time, as hex, from one read of ``os.urandom`` per 256 ids (a
#: system call each was most of an id's cost). Taken with ``next``, which no two
#: threads can get the same item from; a forked child reads its own.
_random_hex: Iterator[str] = iter(())


def _more_random_hex() -> str:
    global _random_hex
    block = os.urandom(10 * 256).hex()
    more = iter([block[i : i + 20] for i in range(0, len(block), 20)])
    _random_hex = more
    return next(more)


def _forget_random_hex() -> None:
    global _random_hex
    _random_hex = iter(())


os.register_at_fork(after_in_child=_forget_random_hex)


def id_time(id: str) -> datetime | None:
    """When the job with this id was created, or None for an id errands did not make."""
    if len(id) != 32:
        return None
    try:
        return datetime.fromtimestamp(int(id[:12], 16) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(slots=True)
class JobRecord:
    """One job, as a store keeps it. Records handed out are snapshots, not live views."""

    id: str
    name: str
    status: JobStatus = JobStatus.QUEUED
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Attempts started so far; a first-time success has ``attempts == 1``.
    attempts: int = 0
    #: ``retries + 1`` for registered tasks, 1 for plain callables.
    max_attempts: int = 1
    result: Any = None
    #: ``"ExceptionType: message"`` of the last failed attempt.
    error: str | None = None
    traceback: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Earliest start. ``None`` while the job is held: committed by a request whose
    #: response has not been sent yet.
    run_at: datetime | None = None
    #: False for jobs that live only in this process: plain callables, and every job
    #: of the memory store.
    durable: bool = False
    #: The job added just before this one in the same request: this one starts only
    #: once that one has finished (succeeded, failed or cancelled).
    after: str | None = None
    #: The process holding the job: the one that added it in a request, until its
    #: response has been sent; then the worker running it, until when its lease holds.
    owner: str | None = None
    lease_until: datetime | None = None
    #: Attempts whose worker died (its lease ran out): counted in ``attempts``, not
    #: against the task's retries.
    lost: int = 0
    #: When the job was asked to start (``task.options(delay=...)`` or ``at=``), or
    #: None for at once. ``run_at`` is never earlier.
    scheduled_at: datetime | None = None
    #: Among jobs that are due, higher runs first (the task's, or ``options(priority=)``);
    #: equal priorities in the order they fell due, then were added.
    priority: int = 0
    #: When ``errands.cancel`` asked a running job to stop: it ends ``cancelled`` when
    #: its attempt does (at once for ``async def``), whatever the attempt's outcome.
    cancel_requested_at: datetime | None = None
    #: The W3C trace context (``traceparent``) of the span current when the job was
    #: added (the request's, with OpenTelemetry on): each attempt's span is its child.
    traceparent: str | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    def due(self, now: datetime) -> datetime:
        """When the job may start if let go at ``now``: then, or when it is scheduled
        (``scheduled_at``), whichever is later."""
        scheduled = self.scheduled_at
        return now if scheduled is None or scheduled < now else scheduled

    @property
    def failures(self) -> int:
        """Attempts that ran to a failure (not counting those whose worker died)."""
        return self.attempts - self.lost

    def copy(self) -> JobRecord:
        # Spelled out: dataclasses.replace costs several times more, on every claim.
        return JobRecord(
            self.id,
            self.name,
            self.status,
            self.args,
            self.kwargs,
            self.attempts,
            self.max_attempts,
            self.result,
            self.error,
            self.traceback,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.run_at,
            self.durable,
            self.after,
            self.owner,
            self.lease_until,
            self.lost,
            self.scheduled_at,
            self.priority,
            self.cancel_requested_at,
            self.traceparent,
        )
