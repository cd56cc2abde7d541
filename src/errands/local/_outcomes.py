"""How an attempt's outcome is written to a store: the write that records it, and what
is recorded instead when the store cannot take it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta

from .._attempt import Outcome
from .._record import JobRecord, JobStatus, describe_error, utcnow
from ._store import Merging, Store, Success


def write_for(
    store: Store, durable: bool, job: JobRecord, outcome: Outcome, retry_at: datetime | None
) -> Callable[[], JobStatus | None] | Success:
    """The write that records ``outcome``: a call, or a success that the group commit
    merges with the others of its batch (``Merging``). A retry is due ``retry_at``
    (default: after the outcome's backoff)."""
    if outcome.status is JobStatus.SUCCEEDED:
        if durable and isinstance(store, Merging):
            return Success(job, outcome.result)
        return functools.partial(store.complete, job, outcome.result)
    assert outcome.error is not None
    if outcome.status is JobStatus.QUEUED:
        assert outcome.retry_in is not None
        when = retry_at or utcnow() + timedelta(seconds=outcome.retry_in)
        return functools.partial(store.retry, job, outcome.error, outcome.traceback or "", when)
    # Cancelled by errands.cancel: the store ends a job asked to stop cancelled.
    return functools.partial(store.fail, job, outcome.error, outcome.traceback)


def unrecordable(outcome: Outcome, exc: Exception) -> Outcome:
    """What is recorded when the store cannot take ``outcome`` (a result it refuses):
    the job failed, saying why."""
    error, trace = describe_error(exc)
    return Outcome(
        JobStatus.FAILED,
        error=f"StoreError: the store could not keep this job's outcome: {error}",
        traceback=trace,
        seconds=outcome.seconds,
        exc=exc,
    )
