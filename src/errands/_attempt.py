"""One attempt of a registered task, the same in every mode.

The steps: *call* the function, bounded by the task's timeout (``async def`` on the
event loop, ``def`` in a thread of errands' own pool, ``process=True`` in a process
of its own); *classify* what came of it; *decide* whether it is tried again and
after how long; *describe* the error as the job records it. The result is an
``Outcome``, which a backend records (in its store, or as Celery's result); nothing
here touches a store. The local backend calls ``attempt`` on its event loop, and a
Celery worker's thread calls ``attempt_blocking``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from logging import INFO
from typing import TYPE_CHECKING, Any

from ._cancel import CANCELLED_RUNNING, Stop, done, running
from ._logs import entering, fields, leaving
from ._payload import encode_result
from ._process import ProcessRunner, TaskProcessError
from ._record import JobRecord, JobStatus, describe_error
from ._threads import Threads, escaped
from .exceptions import NotSerializable, ResultTooLarge, TaskTimeout

if TYPE_CHECKING:
    from ._task import Task

#: Job outcomes: successes at INFO, retries at WARNING, failures at ERROR. Silence
#: successes with ``logging.getLogger("errands.jobs").setLevel(logging.WARNING)``.
job_logger = logging.getLogger("errands.jobs")

#: What no retry can mend: the same input gives the same refusal.
_FINAL = (NotSerializable, ResultTooLarge)


@dataclass(slots=True)
class Outcome:
    """What came of one attempt."""

    #: ``SUCCEEDED``, ``FAILED`` (for good), ``QUEUED`` (to be tried again), or
    #: ``CANCELLED`` (``errands.cancel`` stopped it).
    status: JobStatus
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    #: Seconds before the next attempt, when ``status`` is ``QUEUED``.
    retry_in: float | None = None
    #: How long the call took.
    seconds: float = 0.0
    exc: Exception | None = None


def succeeded(task: Task[Any, Any], result: Any, max_result: int, seconds: float) -> Outcome:
    """The outcome of a call that returned ``result``: a success if it can be kept."""
    try:
        kept = encode_result(task.name, result, max_result)
    except _FINAL as exc:
        return failed(task, task.policy.max_attempts, exc, seconds)
    return Outcome(JobStatus.SUCCEEDED, kept, seconds=seconds)


def failed(task: Task[Any, Any], failures: int, exc: Exception, seconds: float) -> Outcome:
    """The outcome of a call that raised ``exc``; ``failures`` counts the attempts that
    failed so far, this one included."""
    if isinstance(exc, TaskProcessError):  # raised in the task's own process: its words
        error, trace = exc.error, exc.trace
    else:
        error, trace = describe_error(exc)
    delay = None if isinstance(exc, _FINAL) else task.policy.delay_before_retry(failures)
    status = JobStatus.FAILED if delay is None else JobStatus.QUEUED
    return Outcome(status, None, error, trace, delay, seconds, exc)


class Calls:
    """How this process calls a task's function, each bounded by the task's timeout."""

    def __init__(self, threads: Threads, processes: ProcessRunner) -> None:
        self.threads = threads
        self.processes = processes

    async def call(self, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        timeout = task.policy.timeout
        if task.process:
            func = task.func
            return await self.processes.call(
                func.__module__,
                func.__qualname__,
                json.dumps([args, kwargs]),
                timeout=timeout,
                name=task.name,
            )
        if task.is_async:
            if timeout is None:  # (the common case: one frame less)
                return await task.func(*args, **kwargs)
            return await bounded(task.func(*args, **kwargs), timeout, task.name)
        return await self.threads.run(task.func, args, kwargs, timeout=timeout, name=task.name)


def round_failures(job: JobRecord, task: Task[Any, Any]) -> int:
    """The failed attempts of ``job`` before the one starting now, in this round of
    its task's retries: ``errands.retry`` gives a failed job one more round, raising
    its ``max_attempts`` by the task's."""
    earlier_rounds = max(0, job.max_attempts - task.policy.max_attempts)
    return max(0, job.failures - 1 - earlier_rounds)


async def attempt(
    calls: Calls,
    task: Task[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    failures: int,
    max_result: int,
    stop: Stop | None = None,
    job: tuple[str, int] | None = None,
) -> Outcome:
    """Run one attempt here, on the event loop; ``failures``: failed attempts before it
    (in this round); ``stop``: what ``errands.cancel_requested()`` reads in it; ``job``:
    its id and attempt number, for the records logged meanwhile (``JobLogFilter``)."""
    if stop is not None:
        running(stop)  # in this job's own context (its task's), copied into its thread
    logged = None if job is None else entering((job[0], task.name, job[1]))
    start = time.perf_counter()
    try:
        result = await calls.call(task, args, kwargs)
    except Exception as exc:
        return failed(task, failures + 1, exc, time.perf_counter() - start)
    except SystemExit as exc:  # the task's, not the worker's to end
        return failed(task, failures + 1, escaped(exc), time.perf_counter() - start)
    finally:
        if logged is not None:
            leaving(logged)
    return succeeded(task, result, max_result, time.perf_counter() - start)


def attempt_blocking(
    task: Task[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    failures: int,
    max_result: int,
    stop: Stop | None = None,
    job: tuple[str, int] | None = None,
) -> Outcome:
    """Run one attempt in this thread (a Celery worker's), with the same meaning."""
    start = time.perf_counter()
    token = running(stop)
    logged = None if job is None else entering((job[0], task.name, job[1]))
    try:
        result = _call_blocking(task, args, kwargs, stop)
    except Exception as exc:
        return failed(task, failures + 1, exc, time.perf_counter() - start)
    except asyncio.CancelledError:
        if stop is None or not stop.requested:
            raise
        seconds = time.perf_counter() - start
        return Outcome(JobStatus.CANCELLED, error=CANCELLED_RUNNING, seconds=seconds)
    finally:
        done(token)
        if logged is not None:
            leaving(logged)
    return succeeded(task, result, max_result, time.perf_counter() - start)


async def bounded(coro: Coroutine[Any, Any, Any], timeout: float | None, name: str) -> Any:
    """Await ``coro``, cancelled past ``timeout`` seconds with ``TaskTimeout``."""
    if timeout is None:
        return await coro
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if not scope.expired():
            raise  # the task's own TimeoutError, not ours
    raise TaskTimeout.after(name, timeout)


_loops = threading.local()


def _call_blocking(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], stop: Stop | None
) -> Any:
    timeout = task.policy.timeout
    if task.is_async:
        coro = bounded(task.func(*args, **kwargs), timeout, task.name)
        # This attempt's context (its Stop, its log fields): a Runner would otherwise
        # run every attempt in the context it copied for its first.
        context = contextvars.copy_context()
        return _thread_runner().run(_interruptible(coro, stop), context=context)
    if timeout is None:
        return task.func(*args, **kwargs)
    # In a thread of its own, so that the attempt can be given up at its timeout.
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            done.set_result(context.run(task.func, *args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, name=f"errands-{task.name}", daemon=True).start()
    try:
        return done.result(timeout)
    except concurrent.futures.TimeoutError:
        job_logger.warning(
            "%s timed out after %g s; its thread cannot be stopped and runs on until the "
            "function returns",
            task.name,
            timeout,
        )
        raise TaskTimeout.after(task.name, timeout) from None


async def _interruptible(coro: Coroutine[Any, Any, Any], stop: Stop | None) -> Any:
    """Await ``coro``; ``stop``, requested from another thread, cancels it."""
    if stop is not None:
        loop, current = asyncio.get_running_loop(), asyncio.current_task()
        assert current is not None
        stop.interrupt = functools.partial(loop.call_soon_threadsafe, current.cancel)
        if stop.requested:  # asked before it could be interrupted
            coro.close()
            raise asyncio.CancelledError
    return await coro


def _thread_runner() -> asyncio.Runner:
    """This thread's event loop for ``async def`` tasks, kept between attempts."""
    runner: asyncio.Runner | None = getattr(_loops, "runner", None)
    if runner is None:
        runner = _loops.runner = asyncio.Runner()
    return runner


def log_outcome(
    id: str, task: Task[Any, Any], attempt: int, outcome: Outcome, *, successes: bool = True
) -> None:
    """One line for what came of an attempt (with the traceback for a final failure)."""
    if outcome.status is JobStatus.SUCCEEDED and not (successes and job_logger.isEnabledFor(INFO)):
        return  # the common case: nothing to say
    of = f" (attempt {attempt} of {task.policy.max_attempts})" if attempt > 1 else ""
    extra = fields(id, task.name, attempt)
    if outcome.status is JobStatus.CANCELLED:
        job_logger.warning("job %s (%s) was cancelled while it ran", id, task.name, extra=extra)
    elif outcome.status is JobStatus.SUCCEEDED:
        if successes:
            job_logger.info(
                "job %s (%s) succeeded in %.3f s%s",
                id,
                task.name,
                outcome.seconds,
                of,
                extra=extra,
            )
    elif outcome.status is JobStatus.QUEUED:
        job_logger.warning(
            "job %s (%s) attempt %d of %d failed: %s; retrying in %.2f s",
            id,
            task.name,
            attempt,
            task.policy.max_attempts,
            outcome.error,
            outcome.retry_in,
            extra=extra,
        )
    else:
        final = isinstance(outcome.exc, _FINAL)
        job_logger.error(
            "job %s (%s) failed%s: %s",
            id,
            task.name,
            "" if final or attempt == 1 else f" after {attempt} attempts",
            outcome.error,
            exc_info=None if final or outcome.exc is None else outcome.exc,
            extra=extra,
        )
