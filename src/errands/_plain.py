"""Plain callables: functions, closures, lambdas and bound methods given to
``add_task`` that are not registered tasks.

They cannot be stored (they need not be importable, nor their arguments JSON), so
their jobs live in this process, in every mode: run in the request as FastAPI
does, or handed to this process's worker in *lanes* (a request's plain jobs, run
one after another). An instance keeps their records for ``errands.get()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

import anyio

from ._attempt import job_logger
from ._backlog import Backlog
from ._cancel import CANCELLED_QUEUED
from ._logs import entering, fields, leaving
from ._metrics import OUTCOMES, Metrics
from ._record import JobRecord, JobStatus, describe_error, new_job_id, utcnow
from ._task import callable_name, is_async_callable
from ._threads import Threads, escaped
from ._tuning import KEEP_FINISHED
from ._waiters import WAITERS
from .exceptions import ConfigurationError

logger = logging.getLogger("errands")

_NO_ARGS: list[Any] = cast(list[Any], ())
_NO_KWARGS: dict[str, Any] = {}  # shared, never written


@dataclass(slots=True)
class PlainJob(JobRecord):
    """A plain callable's job: its own record, and the call it makes.

    One object a waiting job (a backlog of many thousands is that many fewer objects
    for the garbage collector to walk); snapshots of it are plain ``JobRecord``
    copies. Its call is forgotten once it has finished.
    """

    func: Callable[..., Any] | None = None
    call_args: tuple[Any, ...] = ()
    call_kwargs: dict[str, Any] = field(default_factory=lambda: _NO_KWARGS)
    is_async: bool = False
    #: The OpenTelemetry context of the request that added it, when FastAPI's own
    #: telemetry traces that request: its attempt is FastAPI's ``background_task`` span.
    trace: Any = None

    def forget_call(self) -> None:
        """Drop the function and its arguments (the record may be kept for ``get``)."""
        self.func = None
        self.call_args = ()
        self.call_kwargs = _NO_KWARGS
        self.trace = None


#: A request's plain jobs, run one after another (one job is kept as itself).
Lane = PlainJob | list[PlainJob]


def new_plain_job(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> PlainJob:
    if not callable(func):
        raise ConfigurationError(f"add_task needs a callable, got {func!r}")
    # args=_NO_ARGS: the record shows no arguments (they need not be JSON); the call
    # keeps them.
    return PlainJob(
        id=new_job_id(),
        name=callable_name(func),
        durable=False,
        args=_NO_ARGS,
        func=func,
        call_args=tuple(args),
        call_kwargs=kwargs,
        is_async=is_async_callable(func),
    )


async def run_plain(job: PlainJob, threads: Threads, jobs: PlainJobs | None = None) -> None:
    """Run a plain job's one attempt; a failure is logged and recorded, never raised.
    ``jobs``: the instance's, which adopted it: its bookkeeping is done at the end
    (also when it is cancelled)."""
    func = job.func
    if job.status is not JobStatus.QUEUED or func is None:
        return  # cancelled while it waited: its bookkeeping is done
    job.attempts += 1
    job.started_at = utcnow()
    job.status = JobStatus.RUNNING
    args, kwargs, trace = job.call_args, job.call_kwargs, job.trace
    job.forget_call()
    start = time.perf_counter()
    logged = entering((job.id, job.name, job.attempts))
    try:
        if trace is not None:
            with traced(trace, func, job.id):
                result = await _call(job, func, args, kwargs, threads)
        elif job.is_async:  # (the common cases, spelled out: no frame of their own)
            result = await func(*args, **kwargs)
        else:
            result = await threads.run(func, args, kwargs, name=job.name)
    except anyio.get_cancelled_exc_class():
        job.error = "cancelled: the worker stopped while the job ran"
        _finish(job, JobStatus.CANCELLED)
        raise
    except (Exception, SystemExit) as exc:
        if not isinstance(exc, Exception):
            exc = escaped(exc)  # the task's, not the worker's to end
        job.error, job.traceback = describe_error(exc)
        job_logger.error(
            "job %s (%s) failed: %s",
            job.id,
            job.name,
            job.error,
            exc_info=exc,
            extra=fields(job.id, job.name, job.attempts),
        )
        _finish(job, JobStatus.FAILED)
    else:
        job.result = result
        job.finished_at = utcnow()
        job.status = JobStatus.SUCCEEDED
        if job_logger.isEnabledFor(logging.DEBUG):
            job_logger.debug(
                "job %s (%s) succeeded in %.3f s",
                job.id,
                job.name,
                time.perf_counter() - start,
                extra=fields(job.id, job.name, job.attempts),
            )
    finally:
        leaving(logged)
        if jobs is not None:
            jobs.finished(job)


async def _call(
    job: PlainJob,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    threads: Threads,
) -> Any:
    if job.is_async:
        return await func(*args, **kwargs)
    return await threads.run(func, args, kwargs, name=job.name)


def traced(trace: Any, func: Callable[..., Any], id: str) -> AbstractContextManager[None]:
    from ._telemetry import background_task  # only ever with FastAPI's telemetry on

    return background_task(trace, func, id)


def cancel_plain(job: PlainJob, reason: str) -> bool:
    """Cancel a job that has not started; False if it had."""
    if job.status is not JobStatus.QUEUED:
        return False
    job.forget_call()
    job.error = reason
    _finish(job, JobStatus.CANCELLED)
    return True


def _finish(job: PlainJob, status: JobStatus) -> None:
    job.finished_at = utcnow()
    job.status = status


class PlainJobs:
    """One instance's plain jobs: the lanes waiting for its worker, the records kept
    for ``get()`` (the last ``KEEP_FINISHED`` finished ones), and their backlog."""

    def __init__(self, backlog: Backlog, metrics: Metrics | None = None) -> None:
        self.backlog = backlog
        self.metrics = metrics
        self.lanes: deque[Lane] = deque()
        self._records: dict[str, PlainJob] = {}
        self._finished: deque[str] = deque()
        self._lock = threading.Lock()

    def adopt(self, jobs: Sequence[PlainJob]) -> None:
        """Keep these jobs' records for ``get()``; their backlog room is reserved."""
        with self._lock:
            for job in jobs:
                self._records[job.id] = job

    def get(self, id: str) -> JobRecord | None:
        job = self._records.get(id)
        return job.copy() if job is not None else None

    def jobs(self, status: JobStatus | None, limit: int) -> list[JobRecord]:
        """The latest ``limit`` records (with ``status``), newest first."""
        found: list[JobRecord] = []
        with self._lock:
            for record in reversed(self._records.values()):
                if len(found) >= limit:
                    break
                if status in (None, record.status):
                    found.append(record.copy())
        return found

    def finished(self, job: PlainJob) -> None:
        """Bookkeeping once an adopted job reached a final state."""
        self.backlog.release(1)
        with self._lock:
            self._finished.append(job.id)
            while len(self._finished) > KEEP_FINISHED:
                self._records.pop(self._finished.popleft(), None)
        WAITERS.notify(job.id)
        started = job.started_at  # None: cancelled before it started, not an attempt
        metrics = self.metrics
        if metrics is not None and metrics.counting is not None and started is not None:
            metrics.attempted(
                job.name,
                OUTCOMES.get(job.status, "failed"),
                (started - job.created_at).total_seconds(),
                ((job.finished_at or utcnow()) - started).total_seconds(),
            )

    def cancel(self, job: PlainJob, reason: str) -> None:
        """Drop an adopted job that has not started (its request failed)."""
        if cancel_plain(job, reason):
            self.finished(job)

    def cancel_by_id(self, id: str) -> JobRecord | None:
        """``errands.cancel`` of a plain job: cancelled if it has not started (one that
        runs cannot be reached: plain callables are not told); its record after."""
        job = self._records.get(id)
        if job is None:
            return None
        self.cancel(job, CANCELLED_QUEUED)
        return job.copy()

    def cancel_waiting(self, reason: str) -> None:
        """Cancel every job still waiting in a lane (no worker will run them)."""
        while self.lanes:
            lane = self.lanes.popleft()
            for job in [lane] if isinstance(lane, PlainJob) else lane:
                self.cancel(job, reason)

    def run(self, job: PlainJob, threads: Threads) -> Coroutine[Any, Any, None]:
        """Run an adopted job, then do its bookkeeping (also when it is cancelled).
        Its coroutine is ``run_plain``'s: one frame less a job."""
        return run_plain(job, threads, self)
