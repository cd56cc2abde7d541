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
import os
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

from celery import states
from celery.exceptions import Reject

from .._payload import encode_result
from ..exceptions import NotSerializable, TaskTimeout
from . import _redis, _stamps
from ._publish import CeleryStore
from ._results import CHAIN

if TYPE_CHECKING:
    import celery

    from .._task import Task

logger = logging.getLogger("errands")

_loops = threading.local()

#: The shortest wait before a retry (see ``_retry``).
MIN_RETRY_DELAY = 0.1


def bind(store: CeleryStore, task: Task[Any, Any]) -> None:
    """Register ``task`` on the store's Celery app, under its errands name."""
    _redis.configure(store.app, task)  # Redis broker: errands' defaults, renewal

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
        ignore_result=False,  # errands reads how a job ended from its result
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
    running = _stamps.begin(request, task, store)  # and the start, stamped on the request
    attempt_running = _RUNNING.add(store, str(request.id), running)
    try:
        result = encode_result(task.name, _call(task, args, kwargs))
    except Exception as exc:
        attempt_running.ended()
        retryable = not isinstance(exc, NotSerializable)
        delay = task.policy.delay_before_retry(attempt) if retryable else None
        if delay is not None:
            logger.warning(
                "errands: job %s (%s) attempt %d of %d failed (%s: %s); retrying in %.2f s",
                request.id,
                task.name,
                attempt,
                task.policy.max_attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            _retry(ctask, exc, delay, task.policy.retries)
        logger.error(
            "errands: job %s (%s) failed after %d attempt(s)", request.id, task.name, attempt
        )
        _stamps.ended(request)
        _publish_next(store, request)
        raise
    attempt_running.ended()
    _stamps.ended(request)
    _publish_next(store, request)
    return result


class _Attempt:
    __slots__ = ("id", "meta", "over", "store")

    def __init__(self, store: CeleryStore, id: str, meta: dict[str, Any]) -> None:
        self.store, self.id, self.meta, self.over = store, id, meta, False

    def ended(self) -> None:
        self.over = True


class _Running:
    """Records ``STARTED`` for attempts still running ``AFTER`` seconds after they
    began, in batches, from one thread of each worker process.

    An attempt that ends sooner is never recorded as running (nobody could have
    looked in between); the start time of every attempt is kept all the same (a
    stamp on its result). Writing it for every attempt, on the task's thread, cost
    a tenth of the throughput of short tasks. The write never overwrites a final
    state, so one that comes late does no harm.
    """

    AFTER = 0.01

    def __init__(self) -> None:
        self._reset()
        # A pool process starts afresh: its own lock, queue and thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._due: deque[tuple[float, _Attempt]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, store: CeleryStore, id: str, meta: dict[str, Any]) -> _Attempt:
        attempt = _Attempt(store, id, meta)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errands-running", daemon=True
                )
                self._thread.start()
            self._due.append((time.monotonic() + self.AFTER, attempt))
        self._wake.set()
        return attempt

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._due:
                        break
                    wait = self._due[0][0] - time.monotonic()
                    due: list[_Attempt] = []
                    while self._due and self._due[0][0] <= time.monotonic():
                        due.append(self._due.popleft()[1])
                if not due:
                    time.sleep(max(wait, 0.001))
                    continue
                self._write([a for a in due if not a.over])

    @staticmethod
    def _write(attempts: list[_Attempt]) -> None:
        by_store: dict[int, list[_Attempt]] = {}
        for attempt in attempts:
            by_store.setdefault(id(attempt.store), []).append(attempt)
        for group in by_store.values():
            entries = [(a.id, states.STARTED, a.meta) for a in group]
            try:
                group[0].store.begin_states(entries, unless_final=True)(True)
            except Exception as exc:  # the jobs run all the same; only "running" is missing
                logger.error("errands: recording jobs as running failed: %s", exc)


_RUNNING = _Running()


def _retry(ctask: celery.Task[Any, Any], exc: Exception, delay: float, retries: int) -> NoReturn:
    # Celery records RETRY just after sending the retry: a retry that could start
    # sooner than that might see its own final state overwritten by it.
    countdown = max(delay, MIN_RETRY_DELAY)
    _stamps.failed(ctask.request, exc, countdown)  # the retry's message carries them on
    try:
        raise ctask.retry(exc=exc, countdown=countdown, max_retries=retries) from exc
    except Reject as rejected:
        # The retry could not be sent: deliver this attempt again rather than fail
        # the job without its retries (and without its request's next jobs).
        raise Reject(getattr(rejected, "reason", exc), requeue=True) from exc


def _publish_next(store: CeleryStore, request: Any) -> None:
    ref = getattr(request, CHAIN, None)
    if not ref:
        return
    chain_id, index = ref
    hand_off = store.hand_off(str(request.id))
    if hand_off is None:
        return  # a copy of this job delivered twice already started the next one
    published = False
    try:
        jobs = store.read_chain(chain_id)
        if jobs is None:
            logger.error(
                "errands: the jobs to run after %s are gone from the result backend "
                "(expired?); they do not run",
                request.id,
            )
            published = True
            return
        following = (chain_id, index + 1) if index + 1 < len(jobs) else None
        store.send(jobs[index], following)
        published = True
    except Exception as exc:
        # Not acknowledged: the job is delivered again and runs again (at least
        # once), rather than its request's next jobs being lost.
        logger.error("errands: publishing the job after %s failed; rejecting it", request.id)
        raise Reject(exc, requeue=True) from exc
    finally:
        hand_off(published)


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
