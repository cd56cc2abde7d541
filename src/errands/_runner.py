"""Running one attempt of one job, and recording what came of it.

The steps of a job's life are named here, in order: ``start`` (claimed elsewhere),
``call`` (async on the loop, def in the runner's own thread pool, bounded by the
task's timeout), then ``record`` a success, a retry or a failure. The worker and
the eager path share these steps; they differ only in how they pick jobs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import anyio

from ._payload import encode_result
from ._process import TaskProcessError
from ._record import JobRecord, JobStatus, describe_error, new_job_id, utcnow
from ._task import callable_name, is_async_callable
from .exceptions import ConfigurationError, NotSerializable, TaskTimeout

if TYPE_CHECKING:
    from ._errands import Errands

logger = logging.getLogger("errands")


_NO_ARGS: list[Any] = cast(list[Any], ())
_NO_KWARGS: dict[str, Any] = {}  # shared, never written


@dataclass(slots=True)
class LocalJob(JobRecord):
    """A plain callable's job: it cannot be stored, so it runs in this process.

    It is its own record (one object a waiting job: a backlog of many thousands is
    that many fewer objects for the garbage collector to walk), and snapshots of it
    are plain ``JobRecord`` copies. Its call is forgotten once it has finished.
    """

    func: Callable[..., Any] | None = None
    call_args: tuple[Any, ...] = ()
    call_kwargs: dict[str, Any] = field(default_factory=lambda: _NO_KWARGS)
    is_async: bool = False

    @property
    def record(self) -> JobRecord:
        return self

    def forget_call(self) -> None:
        """Drop the function and its arguments (the record may be kept for ``get``)."""
        self.func = None
        self.call_args = ()
        self.call_kwargs = _NO_KWARGS


def new_local_job(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> LocalJob:
    if not callable(func):
        raise ConfigurationError(f"add_task needs a callable, got {func!r}")
    # args=_NO_ARGS: the record shows no arguments (they need not be JSON); the call
    # keeps them.
    return LocalJob(
        id=new_job_id(),
        name=callable_name(func),
        durable=False,
        args=_NO_ARGS,
        func=func,
        call_args=tuple(args),
        call_kwargs=kwargs,
        is_async=is_async_callable(func),
    )


def describe(exc: BaseException) -> tuple[str, str]:
    """``("Type: message", "full traceback")`` for recording on a job."""
    if isinstance(exc, TaskProcessError):  # raised in the task's own process: its words
        return exc.error, exc.trace or ""
    return describe_error(exc)


class Runner:
    """Calls tasks: ``async def`` on the event loop, ``def`` in a bounded pool of its
    own threads, so sync tasks never take the threads that serve sync endpoints."""

    def __init__(self, threads: int, thread_name: str = "errands") -> None:
        self.threads = threads
        self._thread_name = thread_name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, self._thread_name)
        return self._executor

    def close(self) -> None:
        # Threads still running a timed-out task cannot be stopped; do not wait for
        # them. Calls already submitted (an eager request's) still run.
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        is_async: bool,
        timeout: float | None = None,
        name: str = "",
    ) -> Any:
        if timeout is None:
            if is_async:
                return await func(*args, **kwargs)
            return await self._in_thread(func, args, kwargs)
        with anyio.move_on_after(timeout):
            if is_async:
                return await func(*args, **kwargs)
            return await self._in_thread(func, args, kwargs)
        if not is_async:
            logger.warning(
                "errands: %s timed out after %s s; its thread cannot be stopped and keeps "
                "its slot in the pool until the function returns",
                name,
                _seconds(timeout),
            )
        raise TaskTimeout(f"task {name!r} timed out after {_seconds(timeout)} s")

    async def _in_thread(
        self, func: Callable[..., Any], args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
    ) -> Any:
        context = contextvars.copy_context()
        call = functools.partial(context.run, func, *args, **kwargs)
        return await asyncio.wrap_future(self.executor.submit(call))

    # -- plain callables --------------------------------------------------------

    async def run_local(self, job: LocalJob, finished: Callable[[JobRecord], None]) -> None:
        record = job.record
        func = job.func
        if record.status is not JobStatus.QUEUED or func is None:
            return  # cancelled while it waited
        record.attempts += 1
        record.started_at = utcnow()
        record.status = JobStatus.RUNNING
        args, kwargs = job.call_args, job.call_kwargs
        job.forget_call()
        try:
            result = await self.call(func, args, kwargs, is_async=job.is_async, name=record.name)
        except anyio.get_cancelled_exc_class():
            record.error = "cancelled: the worker stopped while the job ran"
            _finish(record, JobStatus.CANCELLED)
            finished(record)
            raise
        except Exception as exc:
            record.error, record.traceback = describe(exc)
            logger.error("errands: job %s (%s) failed", record.id, record.name, exc_info=exc)
            _finish(record, JobStatus.FAILED)
        else:
            record.result = result
            _finish(record, JobStatus.SUCCEEDED)
        finished(record)

    # -- registered tasks -------------------------------------------------------

    async def run_stored(
        self, errands: Errands, job: JobRecord, *, hold_retries: bool = False
    ) -> datetime | None:
        """Run one claimed attempt and record it; the time of the retry, if any.

        With ``hold_retries`` the retried job is held rather than made due, for a
        caller that waits out the backoff itself (the eager path).
        """
        store = errands.store
        task = errands.registered(job.name)
        if task is None:
            error = (
                f"task {job.name!r} is not registered in this process; register it with "
                f"@errands.task in a module the worker imports"
            )
            logger.error("errands: job %s failed: %s", job.id, error)
            await _record_final(errands, store.fail, job, f"ConfigurationError: {error}", None)
            return None
        leases = errands.leases()
        leases.hold(job)
        try:
            try:
                if task.process:
                    func = task.func
                    result = await errands.process_runner.call(
                        func.__module__,
                        func.__qualname__,
                        json.dumps([job.args, job.kwargs]),
                        timeout=task.policy.timeout,
                        name=task.name,
                    )
                else:
                    result = await self.call(
                        task.func,
                        job.args,
                        job.kwargs,
                        is_async=task.is_async,
                        timeout=task.policy.timeout,
                        name=task.name,
                    )
            finally:
                # The attempt is over: no renewal may race the write that records it
                # (it would read the job as lost).
                leases.drop(job)
            result = encode_result(task.name, result)
        except anyio.get_cancelled_exc_class():
            store.requeue(job)
            raise
        except NotSerializable as exc:
            error, trace = describe(exc)
            logger.error("errands: job %s (%s) failed: %s", job.id, job.name, error)
            await _record_final(errands, store.fail, job, error, trace)
            return None
        except Exception as exc:
            return await self._record_failure(
                errands, job, task.policy.delay_before_retry(job.failures), exc, hold_retries
            )
        await _record_final(errands, store.complete, job, result)
        return None

    async def _record_failure(
        self,
        errands: Errands,
        job: JobRecord,
        delay: float | None,
        exc: Exception,
        hold: bool,
    ) -> datetime | None:
        error, trace = describe(exc)
        if delay is None:
            logger.error(
                "errands: job %s (%s) failed after %d attempt(s)",
                job.id,
                job.name,
                job.attempts,
                exc_info=exc,
            )
            await _record_final(errands, errands.store.fail, job, error, trace)
            return None
        run_at = utcnow() + timedelta(seconds=delay)
        logger.warning(
            "errands: job %s (%s) attempt %d of %d failed (%s); retrying in %.2f s",
            job.id,
            job.name,
            job.attempts,
            job.max_attempts,
            error,
            delay,
        )
        when: datetime | None = run_at
        if hold:
            # The eager caller waits out the backoff itself; a durable store still gets
            # a time, after which any worker may retry it should this process die.
            when = run_at + timedelta(seconds=errands.hold) if errands.store.durable else None
        await errands.write(errands.store.retry, job, error, trace, when)
        return run_at


async def _record_final(
    errands: Errands, operation: Callable[..., bool], job: JobRecord, *args: Any
) -> None:
    """Record a final state (``store.complete`` or ``store.fail``); if this attempt's
    claim still held, do this process's bookkeeping for a finished job."""
    if await errands.write(operation, job, *args):
        errands.job_finished(job)


def _finish(record: JobRecord, status: JobStatus) -> None:
    record.finished_at = utcnow()
    record.status = status


def _seconds(value: float) -> str:
    return f"{value:g}"
