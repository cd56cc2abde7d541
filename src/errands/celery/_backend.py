"""The Celery backend: registered tasks run on a Celery app's workers.

Celery owns delivery: a request's jobs are published before its response (there is
nothing to release after it), Celery's workers run them (``_task.py``: each
registered task is a Celery task whose body is errands' attempt), and a job's
record is read from Celery's result backend (``_results.py``). This process's
worker runs only plain callables, which cannot travel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
from celery import Celery

from .._backend import Backend
from .._group_commit import GroupCommit
from .._loops import LoopLocal
from .._options import Runtime
from .._record import JobRecord, JobStatus, utcnow
from .._stats import Stats, WorkerInfo, activity
from .._tuning import CELERY_INSPECT_TIMEOUT
from .._waiters import WAITERS
from ..exceptions import BrokerUnavailable, ConfigurationError
from ._actions import cancel_job, retry_job
from ._publish import Publisher
from ._task import bind

if TYPE_CHECKING:
    from .._core import Core
    from .._task import Task

logger = logging.getLogger("errands")


class CeleryBackend(Backend):
    durable = True
    remote_reads = True  # the result backend is across the network

    def __init__(self, app: Celery, runtime: Runtime) -> None:
        self.app = app
        self.url = f"celery://{app.main or 'celery'}"
        self.publisher = Publisher(app, publish_timeout=runtime.options.publish_timeout)
        self.location = self.publisher.broker
        expires = app.conf.result_expires
        seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
        # Kept for good when results never expire.
        self.keeps_finished = float(seconds) if seconds else float("inf")
        self._options = runtime.options
        self._tasks = runtime.tasks
        self._metrics = runtime.metrics
        self._tracing = runtime.tracing
        # Requests' publishes gather while one batch is being sent, like a group
        # commit with no transaction: one hand-over to a thread for many requests.
        self._groups = LoopLocal(lambda: GroupCommit(contextlib.nullcontext))

    def __repr__(self) -> str:
        return f"<CeleryBackend {self.url}>"

    def register(self, task: Task[Any, Any]) -> None:
        if task.process:
            logger.warning(
                "task %r: process=True makes no difference in Celery mode; Celery's prefork "
                "pool runs tasks in processes of their own",
                task.name,
            )
        options = self._options
        bind(
            self.publisher,
            task,
            max_result=options.max_result,
            lease=options.lease,
            metrics=self._metrics,
            tracing=self._tracing,
        )

    def check_eager(self) -> None:
        raise ConfigurationError(
            "eager=True runs jobs in this process, and in Celery mode Celery's workers "
            "run them; in tests, construct Errands('memory://', eager=True) instead "
            "(ERRANDS_URL=memory:// with Errands() does it without a code change)"
        )

    # -- adding jobs ------------------------------------------------------------------

    def add(self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()) -> list[JobRecord]:
        return self.publisher.enqueue(records, chosen)  # in the calling thread: it may block

    async def commit(
        self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()
    ) -> list[JobRecord]:
        """Publish a request's jobs, within ``publish_timeout``."""
        publisher = self.publisher
        deadline = time.monotonic() + publisher.publish_timeout

        def publish() -> list[JobRecord]:
            if time.monotonic() > deadline:  # its request has failed already: skip it
                raise publisher.timed_out(records)
            return publisher.enqueue(records, chosen)

        group = self._groups.get()
        published = group.submit(publish)
        try:
            kept: list[JobRecord] = await asyncio.wait_for(
                asyncio.shield(published), publisher.publish_timeout
            )
        except (TimeoutError, asyncio.CancelledError) as exc:
            # The request fails (the client is told to try again, or has gone): should
            # its jobs reach the broker after all, revoke them, so that it leaves
            # nothing to run (best effort: a worker may start one first).
            def revoke(done: asyncio.Future[Any]) -> None:
                if done.cancelled() or done.exception():
                    return
                skipped = {id(r) for r in done.result()}  # kept under their ids: not ours
                ids = [r.id for r in records if id(r) not in skipped]
                group.submit(functools.partial(publisher.cancel, ids, "dropped: request failed"))

            published.add_done_callback(revoke)
            if isinstance(exc, TimeoutError):
                raise publisher.timed_out(records) from None
            raise
        return kept

    async def release(self, ids: Sequence[str]) -> None:
        """Nothing to do: the jobs were published before the response."""

    async def cancel(self, ids: Sequence[str], reason: str) -> list[str]:
        cancel = functools.partial(self.publisher.cancel, ids, reason)
        cancelled = await anyio.to_thread.run_sync(cancel)  # the broker and backend
        for id in cancelled:
            WAITERS.notify(id)
        return cancelled

    # -- acting on jobs ---------------------------------------------------------------

    def cancel_job(self, id: str) -> JobRecord | None:
        record = self._complete(cancel_job(self.publisher, id))
        if record is not None and record.finished:
            WAITERS.notify(id)
        return record

    def retry_job(self, id: str, max_attempts: int) -> JobRecord | None:
        return self._complete(retry_job(self.publisher, id, max_attempts))

    # -- reading ----------------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        return self._complete(self.publisher.get(id))

    def jobs(
        self, status: JobStatus | None, limit: int, task: str | None = None, offset: int = 0
    ) -> list[JobRecord]:
        """This process's latest jobs (Celery's backend cannot list them all: use Flower)."""
        found = self.publisher.jobs(status, offset + limit if task is None else 10**9)
        records = [r for r in map(self._complete, found) if r and task in (None, r.name)]
        return records[offset : offset + limit]

    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        raise ConfigurationError(
            "in Celery mode, finished jobs are Celery's results, which expire by themselves "
            "(the app's result_expires, one day by default): there is nothing to purge"
        )

    def _complete(self, record: JobRecord | None) -> JobRecord | None:
        """What only the registry knows: the task's attempts allowed."""
        if record is not None:
            task = self._tasks.get(record.name)
            if task is not None:  # (a job retried with errands.retry may have more)
                record.max_attempts = max(record.max_attempts, task.policy.max_attempts)
        return record

    def unfinished(self) -> int:
        return self.publisher.unfinished()

    def stats(self) -> Stats:
        """Counts of the jobs this process published (Celery's backend cannot count the
        others), and the live workers as ``celery inspect`` sees them."""
        counts = dict.fromkeys(JobStatus, 0)
        tasks: dict[str, dict[JobStatus, int]] = {}
        known = self.publisher.jobs(None, 10**9)
        for record in known:  # (publisher.counts() forgets finished jobs: it serves join)
            counts[record.status] += 1
            by_status = tasks.setdefault(record.name, {})
            by_status[record.status] = by_status.get(record.status, 0) + 1
        try:
            inspect = self.app.control.inspect(timeout=CELERY_INSPECT_TIMEOUT)
            registered = inspect.registered() or {}
        except Exception as exc:
            raise BrokerUnavailable(
                f"asking the Celery workers what they run failed ({type(exc).__name__}: "
                f"{exc}); is the broker running at {self.publisher.broker}?"
            ) from exc
        workers = [
            WorkerInfo(node, node.partition("@")[2], None, tuple(sorted(names)), None, None)
            for node, names in sorted(registered.items())
        ]
        runnable = {name for worker in workers for name in worker.tasks}
        unrunnable = {
            name: counts_[JobStatus.QUEUED]
            for name, counts_ in tasks.items()
            if counts_.get(JobStatus.QUEUED) and name not in runnable
        }
        return Stats(counts, tasks, workers, unrunnable, activity(known, utcnow()))

    # -- running ----------------------------------------------------------------------

    def run_worker(
        self, core: Core, *, concurrency: int | None, extra: Sequence[str], log_level: str
    ) -> None:
        argv = ["worker", f"--loglevel={log_level}"]
        if concurrency is not None:
            argv.append(f"--concurrency={concurrency}")
        code: int | None = self.app.start([*argv, *extra])
        if code:
            raise SystemExit(code)  # a supervisor restarts a worker that failed
