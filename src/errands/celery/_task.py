"""Celery mode, the worker side: each registered task becomes a Celery task.

It is registered on the user's Celery app under the errands name, so ``celery -A
... worker``, Flower and ``celery inspect`` see it. Its body keeps errands'
meaning of a task's options, whatever the pool:

- an attempt is errands' own (``_attempt.attempt_blocking``, as in every mode):
  ``timeout`` cancels an ``async def`` attempt, and gives up a ``def`` one's thread;
  what to retry, after how long, and the error recorded are decided there.
- a retry goes through Celery (``Task.retry``: a message on the broker, not a
  sleep in the worker).
- late acknowledgement, and rejection when the worker is lost: a job whose worker
  dies mid-task is delivered again (at least once).
- once the job has finished (succeeded, or failed for good) the next job of its
  request is published: a request's jobs run in the order added, and a failing one
  does not stop the ones after it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn

from celery import states
from celery.app.task import Context
from celery.exceptions import Ignore, Reject

from .._attempt import attempt_blocking, log_outcome
from .._cancel import CANCELLED_RUNNING, Stop
from .._metrics import Metrics, outcome_of
from .._record import JobStatus
from .._tracing import Tracing, attempt_span, ended
from .._tuning import CELERY_RUNNING_AFTER, MIN_CELERY_RETRY_DELAY
from . import _limits, _redis, _stamps
from ._cancels import CANCELS
from ._publish import Publisher
from ._results import CHAIN, LOST, count

if TYPE_CHECKING:
    import celery

    from .._task import Task

logger = logging.getLogger("errands")


def bind(
    store: Publisher,
    task: Task[Any, Any],
    *,
    max_result: int,
    lease: float,
    metrics: Metrics,
    tracing: Tracing,
) -> None:
    """Register ``task`` on the store's Celery app, under its errands name."""
    _limits.check(store, task)
    _redis.configure(store.app, task, lease)  # Redis broker: errands' defaults, renewal

    def run(self: celery.Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if task.limit is None:
            return _run(self, store, task, list(args), kwargs, max_result, metrics, tracing)
        id = str(self.request.id)
        wait = _limits.acquire(store, task, id, lease)
        if wait is not None:  # held back by its limits: again later, no attempt spent
            _limits.hold(self, wait)
            raise Ignore()
        try:
            return _run(
                self, store, task, list(args), kwargs, max_result, metrics, tracing, slot=lease
            )
        finally:
            _limits.release(store, task, id)

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
    store: Publisher,
    task: Task[Any, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    max_result: int,
    metrics: Metrics,
    tracing: Tracing,
    *,
    slot: float | None = None,
) -> Any:
    """One attempt; ``slot``: the job holds a slot of its task's concurrency, renewed
    for that long while it runs."""
    request = ctask.request
    attempt = request.retries + 1
    id = str(request.id)
    lost_before = count((getattr(request, "stamps", None) or {}).get(LOST))
    running = _stamps.begin(request, task, store)  # and the start, stamped on the request
    attempt_running = _RUNNING.add(store, id, running)
    stop = Stop()
    renew = (
        (_limits.running_key(task.name), slot)
        if slot and task.limit and task.limit.concurrency
        else None
    )
    CANCELS.track(store, id, stop, renew)
    traced = attempt_span(
        running["traceparent"], task.name, id, running["attempts"], tracing.provider
    )
    try:
        with traced as span:
            outcome = attempt_blocking(
                task,
                args,
                kwargs,
                failures=attempt - 1,
                max_result=max_result,
                stop=stop,
                job=(id, attempt),
            )
            ended(span, outcome)
    finally:
        asked = CANCELS.untrack(id)
        attempt_running.ended()
    # Celery logs successes itself; errands says more of failures and retries.
    log_outcome(id, task, attempt, outcome, successes=False)
    if not metrics.looked:  # a Celery worker's process: its global meter provider, if set
        metrics.opentelemetry(gauges=False)
    if metrics.counting is not None:
        if running["lost"] > lost_before:  # found lost with its worker: redelivered
            metrics.lost([task.name] * (running["lost"] - lost_before))
        metrics.attempted(task.name, outcome_of(outcome), None, outcome.seconds)
    if asked is not None:  # errands.cancel: ends cancelled, however the attempt went
        _cancelled(ctask, store, task, asked)
    if outcome.status is JobStatus.QUEUED:
        assert outcome.exc is not None and outcome.retry_in is not None
        _retry(ctask, outcome.exc, outcome.retry_in, task.policy.retries)
    _stamps.ended(request)  # when it ended: before the next job of its request starts
    _publish_next(store, request)
    if outcome.status is JobStatus.FAILED:
        assert outcome.exc is not None
        raise outcome.exc  # Celery records it: FAILURE, with its type, message and traceback
    return outcome.result


class _Attempt:
    __slots__ = ("id", "meta", "over", "store")

    def __init__(self, store: Publisher, id: str, meta: dict[str, Any]) -> None:
        self.store, self.id, self.meta, self.over = store, id, meta, False

    def ended(self) -> None:
        self.over = True


class _Running:
    """Records ``STARTED`` for attempts still running ``CELERY_RUNNING_AFTER`` seconds after they
    began, in batches, from one thread of each worker process.

    An attempt that ends sooner is never recorded as running (nobody could have
    looked in between); the start time of every attempt is kept all the same (a
    stamp on its result). Writing it for every attempt, on the task's thread, cost
    a tenth of the throughput of short tasks. The write never overwrites a final
    state, so one that comes late does no harm.

    The thread is woken only when it has gone idle (after ``_LINGER`` seconds without
    attempts): while attempts keep coming it looks every ``CELERY_RUNNING_AFTER``
    seconds by itself, so that an attempt that starts costs no wake-up of another
    thread (a tenth of the worker's CPU time for short tasks, as waking it for each).
    """

    def __init__(self) -> None:
        self._reset()
        # A pool process starts afresh: its own lock, queue and thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._due: deque[tuple[float, _Attempt]] = deque()
        self._wake = threading.Event()
        self._idle = True  # the thread waits for _wake (or is not started yet)
        self._thread: threading.Thread | None = None

    def add(self, store: Publisher, id: str, meta: dict[str, Any]) -> _Attempt:
        attempt = _Attempt(store, id, meta)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errands-running", daemon=True
                )
                self._thread.start()
            self._due.append((time.monotonic() + CELERY_RUNNING_AFTER, attempt))
            idle, self._idle = self._idle, False
        if idle:
            self._wake.set()
        return attempt

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            quiet = 0.0  # since when nothing was due
            while True:
                with self._lock:
                    now = time.monotonic()
                    due: list[_Attempt] = []
                    while self._due and self._due[0][0] <= now:
                        due.append(self._due.popleft()[1])
                    if self._due or due:
                        quiet = 0.0
                        wait = self._due[0][0] - now if self._due else CELERY_RUNNING_AFTER
                    elif not quiet:
                        quiet, wait = now, CELERY_RUNNING_AFTER
                    elif now - quiet < _LINGER:
                        wait = CELERY_RUNNING_AFTER
                    else:
                        self._idle = True  # the next add wakes it
                        break
                if due:
                    self._write([a for a in due if not a.over])
                # At most one look a _TICK: the attempts that came due meanwhile are
                # written together.
                time.sleep(max(wait, _TICK))

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
                logger.error("recording jobs as running failed: %s", exc)


#: How long ``_Running``'s thread goes on looking by itself after the last attempt
#: it was given came due, before it waits to be woken.
_LINGER = 1.0
#: The least time between two looks of ``_Running``'s thread: an attempt is recorded
#: as running between ``CELERY_RUNNING_AFTER`` and that plus this after it began.
_TICK = CELERY_RUNNING_AFTER / 2

_RUNNING = _Running()


def _retry(ctask: celery.Task[Any, Any], exc: Exception, delay: float, retries: int) -> NoReturn:
    # Celery records RETRY just after sending the retry: a retry that could start
    # sooner than that might see its own final state overwritten by it.
    countdown = max(delay, MIN_CELERY_RETRY_DELAY)
    _stamps.failed(ctask.request, exc, countdown)  # the retry's message carries them on
    try:
        raise ctask.retry(exc=exc, countdown=countdown, max_retries=retries) from exc
    except Reject as rejected:
        # The retry could not be sent: deliver this attempt again rather than fail
        # the job without its retries (and without its request's next jobs).
        raise Reject(getattr(rejected, "reason", exc), requeue=True) from exc


def _cancelled(
    ctask: celery.Task[Any, Any], store: Publisher, task: Task[Any, Any], when: str
) -> NoReturn:
    """End a job that errands.cancel asked to stop: revoked (errands reads it as
    cancelled), its result discarded, no retry; then its request's next job."""
    request = ctask.request
    _stamps.stopped(request, when)
    _stamps.ended(request)
    stamps = dict(getattr(request, "stamps", None) or {})
    ran = Context(
        id=request.id,
        task=task.name,
        args=request.args,
        kwargs=request.kwargs,
        retries=request.retries + 1,  # the attempt that was stopped counts
        stamps=stamps,
        stamped_headers=list(stamps),
    )
    store.app.backend.mark_as_revoked(str(request.id), CANCELLED_RUNNING, request=ran)
    _publish_next(store, request)
    raise Ignore()  # acknowledged, and Celery records nothing over the revoke


def _publish_next(store: Publisher, request: Any) -> None:
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
                "the jobs to run after %s are gone from the result backend "
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
        logger.error("publishing the job after %s failed; rejecting it", request.id)
        raise Reject(exc, requeue=True) from exc
    finally:
        hand_off(published)
