"""Celery mode: ``errands.cancel`` and ``errands.retry`` on the web side (the worker
side of a cancel is ``_cancels.py``)."""

from __future__ import annotations

import contextlib

from celery import states
from celery.backends.redis import RedisBackend

from .._cancel import CANCELLED_QUEUED
from .._record import JobRecord, JobStatus, utcnow
from .._tuning import CELERY_INSPECT_TIMEOUT, CELERY_MAX_ERROR, CELERY_MAX_TRACEBACK
from ..exceptions import BrokerUnavailable, ConfigurationError
from ._cut import cut
from ._publish import Publisher, queued_record
from ._results import cancel_key, expires_args, message_body


def cancel_job(publisher: Publisher, id: str) -> JobRecord | None:
    """``errands.cancel``: mark the job (the workers look for the mark of the jobs
    they run, about once a second), and revoke it if it is still queued."""
    record = publisher.get(id)
    if record is None or record.finished:
        return record
    backend = publisher.app.backend
    if not isinstance(backend, RedisBackend):
        if record.status is JobStatus.RUNNING:
            raise ConfigurationError(
                f"job {id} runs, and stopping a running job in Celery mode needs a "
                f"Redis result backend (workers look for the mark there); this app's "
                f"is {type(backend).__name__}"
            )
    else:
        # Marked first, whatever it is doing: should a worker start it before the
        # revoke reaches it (or a worker that missed the revoke), it still stops.
        expires = expires_args(getattr(backend, "expires", None))
        when = utcnow().isoformat()
        backend.client.set(cancel_key(id), when, ex=expires[1] if expires else None)
    if record.status is JobStatus.QUEUED:
        publisher.cancel([id], CANCELLED_QUEUED)
    return publisher.get(id)


def retry_job(publisher: Publisher, id: str, max_attempts: int) -> JobRecord | None:
    """``errands.retry``: publish a failed or cancelled job again, under its id,
    carrying what its earlier rounds left (attempts, last error)."""
    record = publisher.get(id)
    if record is None or record.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        return record
    backend = publisher.app.backend
    try:
        key = before = None
        if isinstance(backend, RedisBackend):
            # Its state before, to put back as it was should the publish fail.
            key = backend.get_key_for_task(id)
            before = backend.client.get(key)
            backend.client.delete(cancel_key(id))
        if record.status is JobStatus.CANCELLED:
            # Workers keep revoked ids for hours, and would discard it again: ask them
            # to forget it first (each live worker answers; waits up to a second).
            publisher.app.control.broadcast(
                "errands_unrevoke",
                arguments={"ids": [id]},
                reply=True,
                timeout=CELERY_INSPECT_TIMEOUT,
            )
    except Exception as exc:
        raise BrokerUnavailable(
            f"retrying job {id} ({record.name}): the Celery app's broker or result backend "
            f"failed ({type(exc).__name__}: {exc}); nothing was changed"
        ) from exc
    failed = record.status
    record.status = JobStatus.QUEUED
    record.max_attempts = max_attempts
    record.after = None  # what it waited for has finished
    record.scheduled_at = None
    record.run_at = utcnow()
    record.result = record.finished_at = record.cancel_requested_at = None
    described = message_body(record)
    described.update(
        before=record.attempts - record.lost,
        lost=record.lost,
        error=record.error and cut(record.error, CELERY_MAX_ERROR),
        traceback=record.traceback and cut(record.traceback, CELERY_MAX_TRACEBACK, keep_end=True),
    )
    try:
        # Queued before it is published: a worker's states, written after, stand.
        backend.store_result(id, {"errands": queued_record(record)}, states.PENDING)
        publisher.send(described, None)
    except Exception as exc:
        # Not published: what it was, so that it can be retried again (a queued job
        # that no message carries would never run, nor be retried).
        with contextlib.suppress(Exception):
            if isinstance(backend, RedisBackend) and before is not None:
                backend.client.set(key, before, keepttl=True)
        raise BrokerUnavailable(
            f"publishing job {id} ({record.name}) again to the Celery broker at "
            f"{publisher.broker} failed: {type(exc).__name__}: {exc}; it is "
            f"{failed.value} still: retry it again once the broker answers"
        ) from exc
    publisher.track(id)
    # The record as queued, not read back: a worker may have started or even finished
    # it by now, and the caller asked for the record its retry left.
    return record
