"""Celery mode, the worker side: each registered task becomes a Celery task.

It is registered on the user's Celery app under the errands name, so ``celery -A
... worker``, Flower and ``celery inspect`` see it. Its body keeps errands'
meaning of a task's options, whatever the pool:

- ``timeout``: an ``async def`` attempt is cancelled; a ``def`` one runs in a
  thread of its own that is abandoned when the time is up (as in the other modes;
  a thread cannot be stopped), and the attempt fails with ``TaskTimeout``.
- ``retries``/``backoff``: a failed attempt is retried through Celery
  (``Task.retry``, so the retry is a message on the broker, not a sleep in the
  worker) after a backoff with full jitter.
- late acknowledgement, and rejection when the worker is lost: a job whose worker
  dies mid-task is delivered again (at least once).
- once the job has finished (succeeded, or failed for good) the next job of its
  request is published: a request's jobs run in the order added, and a failing one
  does not stop the ones after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import Reject

from ._job import utcnow
from ._payload import encode_result
from .exceptions import NotSerializable, TaskTimeout
from .stores.celery import NEXT, STARTED_AT, CeleryStore

if TYPE_CHECKING:
    import celery

    from ._task import Task

logger = logging.getLogger("errands")

_loops = threading.local()


def bind(store: CeleryStore, task: Task[Any, Any]) -> None:
    """Register ``task`` on the store's Celery app, under its errands name."""

    def run(self: celery.Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
        return _run(self, store, task, list(args), kwargs)

    run.__module__ = task.func.__module__
    run.__qualname__ = run.__name__ = getattr(task.func, "__name__", task.name)
    run.__doc__ = task.func.__doc__
    store.app.task(
        name=task.name,
        bind=True,
        shared=False,
        typing=False,  # errands checked the arguments when the job was added
        serializer="json",
        acks_late=True,
        reject_on_worker_lost=True,
    )(run)


def _run(
    ctask: celery.Task[Any, Any],
    store: CeleryStore,
    task: Task[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
) -> Any:
    request = ctask.request
    attempt = request.retries + 1
    started_at = utcnow().isoformat()
    # Celery's result of a finished task keeps the request's stamps (result_extended),
    # and nothing else of ours: the start time travels there.
    request.stamps = {**(getattr(request, "stamps", None) or {}), STARTED_AT: started_at}
    request.stamped_headers = [
        *(h for h in getattr(request, "stamped_headers", None) or () if h != STARTED_AT),
        STARTED_AT,
    ]
    started = store.begin_states(
        [
            (
                str(request.id),
                states.STARTED,
                {
                    "name": task.name,
                    "args": args,
                    "kwargs": kwargs,
                    "attempts": attempt,
                    "started_at": started_at,
                },
            )
        ]
    )
    if not store.may_hold_connections:
        started(True)
    try:
        try:
            result = encode_result(task.name, _call(task, args, kwargs))
        finally:
            started(True)  # before Celery records how the attempt ended
    except Exception as exc:
        retryable = not isinstance(exc, NotSerializable)
        delay = task.policy.delay_before_retry(attempt) if retryable else None
        if delay is not None:
            logger.warning(
                "errands: job %s (%s) attempt %d of %d failed (%s: %s); retrying in %.2f s",
                str(request.id),
                task.name,
                attempt,
                task.policy.max_attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            raise ctask.retry(exc=exc, countdown=delay, max_retries=task.policy.retries) from exc
        logger.error(
            "errands: job %s (%s) failed after %d attempt(s)", request.id, task.name, attempt
        )
        _publish_next(store, request)
        raise
    _publish_next(store, request)
    return result


def _publish_next(store: CeleryStore, request: Any) -> None:
    rest = getattr(request, NEXT, None)
    if not rest:
        return
    try:
        store.send(rest[0], rest[1:])
    except Exception as exc:
        # Not acknowledged: the job is delivered again and runs again (at least
        # once), rather than its request's next jobs being lost.
        logger.error("errands: publishing job %s failed; rejecting %s", rest[0]["id"], request.id)
        raise Reject(exc, requeue=True) from exc


def _call(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    timeout = task.policy.timeout
    if task.is_async:
        return _runner().run(_bounded(task.func(*args, **kwargs), timeout, task.name))
    if timeout is None:
        return task.func(*args, **kwargs)
    # In a thread of its own, so that the attempt can be given up at its timeout.
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def attempt() -> None:
        try:
            done.set_result(context.run(task.func, *args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=attempt, name=f"errands-{task.name}", daemon=True).start()
    try:
        return done.result(timeout)
    except concurrent.futures.TimeoutError:
        logger.warning(
            "errands: %s timed out after %g s; its thread cannot be stopped and is left "
            "to finish on its own",
            task.name,
            timeout,
        )
        raise TaskTimeout(f"task {task.name!r} timed out after {timeout:g} s") from None


async def _bounded(coro: Coroutine[Any, Any, Any], timeout: float | None, name: str) -> Any:
    if timeout is None:
        return await coro
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if not scope.expired():
            raise  # the task's own TimeoutError
    raise TaskTimeout(f"task {name!r} timed out after {timeout:g} s")


def _runner() -> asyncio.Runner:
    """This thread's event loop for ``async def`` tasks, kept between tasks."""
    runner: asyncio.Runner | None = getattr(_loops, "runner", None)
    if runner is None:
        runner = _loops.runner = asyncio.Runner()
    return runner
