"""Celery mode's plumbing: publishing jobs to a Celery broker, and errands' own
records in Celery's result backend, read back as job records.

``Publisher.enqueue`` publishes; ``get`` and ``jobs`` read the result backend. The
backend (``_backend.py``) and the worker side (``_task.py``, the Celery task each
registered task becomes) both use it.

A request's registered jobs run one after another: only the first is published,
and the rest are kept in the result backend beside it (its header ``errands_chain``
says where); whoever finishes a job (succeeded, or failed for good) publishes the
next. So one publish per request, and the order holds on any number of workers.

Celery's result backend cannot tell a queued task from one it never heard of
(both are ``PENDING``), so before publishing, each job gets a small ``PENDING``
record of errands' own in the backend: ``get(id)`` says ``queued`` for it, and
``None`` for an id nobody published.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend

from .._record import JobRecord, JobStatus, utcnow
from .._tuning import (
    CELERY_PUBLISH_RETRIES,
    CELERY_RECENT,
    CELERY_TRACKED,
)
from ..exceptions import BrokerUnavailable, ConfigurationError, StoreError
from ._results import (
    AFTER,
    BEFORE,
    CHAIN,
    ERROR,
    LOST,
    MAX_ATTEMPTS,
    PRIORITY,
    SCHEDULED_AT,
    TRACEBACK,
    TRACEPARENT,
    broker_priority,
    cancel_key,
    chains,
    check_app,
    errands_fields,
    expires_args,
    message_body,
    meta,
    ours,
    revoked_request,
    to_record,
)
from ._states import States, encoder

logger = logging.getLogger("errands")


class Publisher(States):
    """Publishing to a Celery app's broker, and errands' records in its result backend."""

    def __init__(self, app: Celery, *, publish_timeout: float = 5.0) -> None:
        check_app(app)
        # errands reads a finished task's name and retries from its result.
        app.conf.result_extended = True
        options = dict(app.conf.broker_transport_options or {})
        try:
            driver = app.connection_for_write().transport.driver_type
        except ImportError as exc:  # a transport's own library is missing
            raise ConfigurationError(
                f"the Celery app's broker needs a library that is not installed ({exc}); "
                f"pip install 'errands[celery]' brings what Redis needs"
            ) from exc
        if driver == "amqp":
            # A publish counts once RabbitMQ has confirmed it, not once it is written
            # to the socket: a broker that dies meanwhile fails the request instead.
            options.setdefault("confirm_publish", True)
        elif driver == "redis":
            # kombu waits forever on a Redis broker that stops answering: bound it.
            options.setdefault("socket_timeout", publish_timeout)
        app.conf.broker_transport_options = options
        self.driver = driver
        self._warned_priority = False
        self.app = app
        self.publish_timeout = publish_timeout
        self._lock = threading.Lock()
        self._unfinished: dict[str, None] = {}
        self._recent: deque[str] = deque(maxlen=CELERY_RECENT)
        States.__init__(self)

    def __repr__(self) -> str:
        return f"<Publisher {self.app.main or 'celery'}>"

    # -- publishing -------------------------------------------------------------

    def enqueue(self, jobs: Sequence[JobRecord], chosen: Collection[str] = ()) -> list[JobRecord]:
        """Publish now, in this thread; returns the jobs not published because a job
        with their id (one of ``chosen``, the ids callers chose) is kept already.

        A broker that refuses connections fails it within about a second; one that
        stops answering, within the socket timeout (``publish_timeout``) of each of
        kombu's attempts. (Requests publish in a thread of the event loop's group
        commit and wait at most ``publish_timeout`` in all.)
        """
        kept: list[JobRecord] = []
        if chosen:
            kept = self._taken([job for job in jobs if job.id in chosen])
            if kept:
                skipped = {id(job) for job in kept}
                jobs = [job for job in jobs if id(job) not in skipped]
        self._publish_all(list(jobs))
        return kept

    def _taken(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Of jobs with ids their callers chose, those whose id is kept already.

        The others' ``PENDING`` records are written now, each only if no record has
        that id (``SET NX``): of two processes adding the same id at once, one wins.
        Their id stays taken while Celery keeps the job's result (``result_expires``).
        """
        backend = self.app.backend
        if not isinstance(backend, RedisBackend):
            raise ConfigurationError(
                f"task.options(job_id=...) needs a Redis result backend in Celery mode (it "
                f"takes each id atomically there); this app's is "
                f"{type(backend).__name__}: set result_backend='redis://...'"
            )
        expires = expires_args(getattr(backend, "expires", None))
        pipe = backend.client.pipeline(transaction=False)
        encode = encoder(backend)
        for job in jobs:
            value = encode(meta(job.id, states.PENDING, queued_record(job)))
            pipe.set(
                backend.get_key_for_task(job.id), value, nx=True, ex=expires[1] if expires else None
            )
        try:
            replies = pipe.execute()
        except Exception as exc:
            raise StoreError(
                f"taking job ids in the Celery result backend failed: {type(exc).__name__}: {exc}"
            ) from exc
        return [job for job, took in zip(jobs, replies, strict=True) if not took]

    def timed_out(self, jobs: Sequence[JobRecord]) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"the Celery broker did not take {len(jobs)} job(s) within "
            f"publish_timeout={self.publish_timeout:g} s; is it running at {self.broker}?"
        )

    def _publish_all(self, jobs: list[JobRecord]) -> None:
        for chain in chains(jobs):
            head, rest = chain[0], chain[1:]
            chain_id = f"{head.id}.chain" if rest else None
            try:
                marked = self._mark_queued(chain, chain_id)
            except Exception as exc:
                raise StoreError(
                    f"recording job {head.id} ({head.name}) as queued in the Celery result "
                    f"backend failed, so it was not published: {type(exc).__name__}: {exc}"
                ) from exc
            sent = False
            try:
                self.send(message_body(head), (chain_id, 0) if chain_id else None)
                sent = True
            except Exception as exc:
                raise BrokerUnavailable(
                    f"publishing job {head.id} ({head.name}) to the Celery broker at "
                    f"{self.broker} failed: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                marked(sent)
        with self._lock:
            for job in jobs:
                self._unfinished[job.id] = None
                self._recent.append(job.id)
            while len(self._unfinished) > CELERY_TRACKED:
                del self._unfinished[next(iter(self._unfinished))]

    def track(self, id: str) -> None:
        """Count job ``id`` among this process's unfinished ones (published again)."""
        with self._lock:
            self._unfinished[id] = None
            self._recent.append(id)

    @property
    def broker(self) -> str:
        """The broker's URL, without its password."""
        return str(self.app.connection_for_write().as_uri())

    def _mark_queued(self, jobs: list[JobRecord], chain_id: str | None) -> Callable[[bool], None]:
        """Record ``jobs`` as queued, and the chain of the later ones under ``chain_id``;
        call what it returns with whether the first was sent.

        The writes are ``SET NX``: should a worker have written a job's state first,
        that state stands. A publish that failed takes them back.
        """
        entries = [(job.id, states.PENDING, queued_record(job)) for job in jobs]
        if chain_id is not None:
            entries.append(
                (chain_id, states.PENDING, {"chain": [message_body(j) for j in jobs[1:]]})
            )
        return self.begin_states(entries, only_new=True)

    def read_chain(self, chain_id: str) -> list[dict[str, Any]] | None:
        """The later jobs of a request, as ``_publish_all`` kept them (None: gone)."""
        fields = errands_fields(self.app.backend.get_task_meta(chain_id)) or {}
        chain = fields.get("chain")
        return chain if isinstance(chain, list) else None

    def hand_off(self, id: str) -> Callable[[bool], None] | None:
        """Take the right to publish the job after ``id``: None if a copy of ``id``
        already did (a job delivered twice must not start its successors twice).
        Call what it returns with False to give the right back (the publish failed).
        On result backends other than Redis every copy has the right."""
        backend = self.app.backend
        if not isinstance(backend, RedisBackend):
            return lambda published: None
        key = f"errands-handed-off-{id}"
        expires = expires_args(getattr(backend, "expires", None))
        if not backend.client.set(key, 1, nx=True, ex=expires[1] if expires else None):
            return None

        def settle(published: bool) -> None:
            if not published:
                backend.client.delete(key)

        return settle

    def send(self, described: dict[str, Any], chain: tuple[str, int] | None) -> None:
        """Publish one job through the app's routing; ``chain`` says where the jobs to
        run after it are kept.

        Unlike ``send_task`` this subscribes to no result: the web process reads
        results when asked, and must not hold a subscription per job.
        """
        app, amqp = self.app, self.app.amqp
        options: dict[str, Any] = {"serializer": "json"}
        if chain is not None:
            options["headers"] = {CHAIN: list(chain)}
        name, args, kwargs = described["name"], described["args"], described["kwargs"]
        options = amqp.router.route(options, name, args, kwargs)
        # Stamps, so that the job's result keeps them, however it ends.
        stamps = {MAX_ATTEMPTS: described.get("max_attempts") or 1}
        if described.get("after"):
            stamps[AFTER] = described["after"]
        for field, stamp in _AGAIN.items():  # a job published again (errands.retry)
            if described.get(field):
                stamps[stamp] = described[field]
        if traceparent := described.get("traceparent"):
            stamps[TRACEPARENT] = traceparent
        priority = described.get("priority") or 0
        if priority:
            stamps[PRIORITY] = priority
            self._check_priority(priority)
        options["priority"] = broker_priority(priority, self.driver)
        eta = None
        if scheduled := described.get("scheduled_at"):
            stamps[SCHEDULED_AT] = scheduled
            # Celery's countdown: the worker that takes the message holds it (on Redis,
            # renewing it; see _redis.py) and starts it no sooner.
            eta = datetime.fromisoformat(scheduled)
            if eta <= utcnow():
                eta = None
        message = amqp.create_task_message(
            described["id"],
            name,
            args,
            kwargs,
            reply_to=app.thread_oid,
            create_sent_event=app.conf.task_send_sent_event,
            stamped_headers=list(stamps),
            eta=eta,
            **stamps,
            **options,
        )
        with (
            app.producer_or_acquire() as producer,
            producer.connection._reraise_as_library_errors(),
        ):
            amqp.send_task_message(
                producer,
                name,
                message,
                retry=True,
                retry_policy=CELERY_PUBLISH_RETRIES,
                # RabbitMQ: the confirm, and a blocked connection (a memory or disk
                # alarm), may not take longer than this.
                timeout=self.publish_timeout,
                confirm_timeout=self.publish_timeout,
                **options,
            )

    def _check_priority(self, priority: int) -> None:
        """Say once if RabbitMQ will ignore priorities (its queues need a maximum)."""
        conf = self.app.conf
        if self._warned_priority or self.driver != "amqp" or conf.task_queue_max_priority:
            return
        if any(getattr(q, "max_priority", None) for q in conf.task_queues or ()):
            return
        self._warned_priority = True
        logger.warning(
            "a job has priority %d, but RabbitMQ ignores message priorities unless the "
            "queue was declared with one: set task_queue_max_priority=10 on the Celery "
            "app (and delete the existing queues, which RabbitMQ will not change)",
            priority,
        )

    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        """Revoke the jobs still queued (Celery's cancel, best effort: live workers skip
        the jobs); those that run or have finished are left to end as they do."""
        ids = list(ids)
        if not ids:
            return []
        cancelled = []
        for id, record in zip(ids, self._records(ids), strict=True):
            if record is not None and record.status is not JobStatus.QUEUED:
                continue
            # With the job's request, so that its result keeps what it was, as a
            # cancelled job's record does in the other modes.
            self.app.backend.mark_as_revoked(id, reason, request=revoked_request(id, record))
            cancelled.append(id)
        if cancelled:
            # After the records: a worker that discards a revoked job records it too,
            # with Celery's reason ("revoked"), and ours is the one to read first.
            self.app.control.revoke(cancelled)
        return cancelled

    # -- reading ----------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        return self._records([id])[0]

    def _records(self, ids: Sequence[str]) -> list[JobRecord | None]:
        """The jobs with these ids, in order (None for an id nobody published)."""
        backend = self.app.backend
        try:
            if isinstance(backend, RedisBackend) and len(ids) > 1:
                raw = backend.mget([backend.get_key_for_task(id) for id in ids])
                pending = {"status": states.PENDING, "result": None}
                metas = [backend.decode_result(v) if v else pending for v in raw]
            else:
                metas = [backend.get_task_meta(id) for id in ids]
        except Exception as exc:
            raise StoreError(
                f"reading jobs from the Celery result backend failed: {type(exc).__name__}: {exc}"
            ) from exc
        records = [to_record(id, meta) for id, meta in zip(ids, metas, strict=True)]
        running = [r for r in records if r is not None and r.status is JobStatus.RUNNING]
        if running and isinstance(backend, RedisBackend):
            try:
                marks = backend.client.mget([cancel_key(r.id) for r in running])
            except Exception as exc:
                raise StoreError(
                    f"reading jobs from the Celery result backend failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for record, mark in zip(running, marks, strict=True):
                if mark:
                    record.cancel_requested_at = datetime.fromisoformat(mark.decode())
        return records

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        """This process's latest jobs (Celery's backend cannot list them all: use Flower)."""
        with self._lock:
            ids = list(reversed(self._recent))
        records = [r for r in self._records(ids) if r is not None]
        return [r for r in records if status in (None, r.status)][:limit]

    def unfinished(self) -> int:
        counts = self.counts()
        return counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING]

    def counts(self) -> dict[JobStatus, int]:
        """Of the jobs this process published, how many are in each status."""
        with self._lock:
            ids = list(self._unfinished)
        counts = dict.fromkeys(JobStatus, 0)
        finished = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for id, record in zip(chunk, self._records(chunk), strict=True):
                status = record.status if record is not None else JobStatus.CANCELLED
                counts[status] += 1
                if status.finished:
                    finished.append(id)
        with self._lock:
            for id in finished:
                self._unfinished.pop(id, None)
        return counts


#: What a job published again (``errands.retry``) carries from its earlier rounds,
#: and the stamp that carries each.
_AGAIN = {"before": BEFORE, "lost": LOST, "error": ERROR, "traceback": TRACEBACK}


def queued_record(job: JobRecord) -> dict[str, Any]:
    """errands' own record of a queued job, as its ``PENDING`` result keeps it."""
    return ours(job.name, job.args, job.kwargs, **queued_fields(job))


def queued_fields(job: JobRecord) -> dict[str, Any]:
    """What a queued job's record keeps beyond its name and arguments."""
    kept: dict[str, Any] = {"max_attempts": job.max_attempts, "after": job.after}
    if job.priority:
        kept["priority"] = job.priority
    if job.attempts:  # published again by errands.retry: what its earlier rounds left
        kept.update(attempts=job.attempts, lost=job.lost, error=job.error)
        kept.update(traceback=job.traceback)
    if job.scheduled_at is not None:
        kept["scheduled_at"] = job.scheduled_at.isoformat()
    if job.traceparent is not None:
        kept["traceparent"] = job.traceparent
    return kept
