"""The local backend: this process's worker claims jobs from a ``Store``.

Memory and SQLite (and any store after them) are this one backend over another
store. A request's jobs are stored before its response and released after it; a
durable store's writes of one event loop share transactions in a thread of their
own (group commit); a claimed job runs here (``_running.Runner``: its attempt, then
the record of its outcome).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .._backend import Backend, Source
from .._group_commit import GroupCommit
from .._loops import LoopLocal
from .._options import Runtime
from .._record import JobRecord, JobStatus, utcnow
from .._stats import Stats, WorkerInfo
from .._tuning import PURGE_EVERY
from .._waiters import WAITERS
from ..exceptions import ConfigurationError
from ._claims import Claims
from ._liveness import Liveness
from ._running import Runner
from ._store import Announcing, ProcessInfo, Store

if TYPE_CHECKING:
    from collections import deque

    from .._core import Core
    from .._task import Task
    from .._worker import Worker

logger = logging.getLogger("errands")

T = TypeVar("T")


#: This process's id (a forked child's own): os.getpid() is a system call.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class LocalBackend(Backend):
    def __init__(self, store: Store, runtime: Runtime, url: str) -> None:
        self.store = store
        self.url = url
        self.location = store.location
        self.durable = store.durable
        self.tasks = runtime.tasks
        self.calls = runtime.calls
        self._options = runtime.options
        self._backlog = runtime.backlog
        self._metrics = runtime.metrics
        self._groups = LoopLocal(lambda: GroupCommit(self.store.batch))
        self._liveness = LoopLocal(lambda: Liveness(self))
        self._claims: Claims | None = None
        self._unlisten: Callable[[], None] | None = None
        self._pid = -1
        self._id = ""
        self._started_at = utcnow()
        self._checked_for_workers = False
        self._purge: asyncio.TimerHandle | None = None
        self.runner = Runner(self, runtime)
        self._hold = timedelta(seconds=self._options.hold)

    def __repr__(self) -> str:
        return f"<LocalBackend {self.store.location}>"

    @property
    def lease(self) -> float:
        return self._options.lease

    @property
    def process_id(self) -> str:
        """This process's id in the store: the owner of the jobs it adds and claims
        (a forked child gets its own)."""
        if self._pid != _pid:
            self._pid = _pid
            self._id = f"{socket.gethostname()}-{self._pid}-{uuid.uuid4().hex[:6]}"
        return self._id

    def process_info(self) -> ProcessInfo:
        worker = self._claims is not None
        now = utcnow()
        return ProcessInfo(
            id=self.process_id,
            role="worker" if worker else "web",
            host=socket.gethostname(),
            pid=os.getpid(),
            tasks=tuple(sorted(self.tasks)) if worker else (),
            started_at=self._started_at,
            seen_at=now,
        )

    def group(self) -> GroupCommit:
        """This event loop's group commit."""
        return self._groups.get()

    def liveness(self) -> Liveness:
        return self._liveness.get()

    async def write(self, operation: Callable[[], T]) -> T:
        """A store write: at once for the memory store, grouped for a durable one."""
        if not self.durable:
            return operation()
        return await self.group().write(operation)

    # -- tasks ------------------------------------------------------------------------

    def register(self, task: Task[Any, Any]) -> None:
        if task.process:
            self.calls.processes.preload(task.func.__module__)
        if self.durable and task.name.startswith("__main__."):
            logger.warning(
                "task %r is registered under __main__, the name of the script being run: "
                "a worker that imports it as a module sees another name and never runs "
                "its jobs; give it a name: @errands.task(name=%r)",
                task.name,
                task.name.removeprefix("__main__."),
            )

    # -- adding jobs ------------------------------------------------------------------

    def add(self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()) -> list[JobRecord]:
        # Every store refuses a second job with an id it keeps: ``chosen`` changes nothing.
        now = utcnow()
        for record in records:
            record.run_at = record.due(now)
        if not self.durable:
            self._backlog.reserve_blocking(len(records))
        kept = self._enqueue(records)
        self._wanted()
        return kept

    def _enqueue(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Enqueue at once; the memory store's room is given back for what it did not
        add (a job with the same id was kept), or for all should it fail."""
        try:
            kept = self.store.enqueue(records)
        except BaseException:
            if not self.durable:
                self._backlog.release(len(records))
            raise
        if kept and not self.durable:
            self._backlog.release(len(kept))
        return kept

    async def commit(
        self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()
    ) -> list[JobRecord]:
        owner = self.process_id
        # Unreleased until the response is out: only this process may let them go
        # sooner, and should it die, the next sweep does (see Liveness).
        until = utcnow() + self._hold
        for record in records:
            record.owner = owner
            # Released, a job is due at its scheduled time (or at once); a job never
            # released is due when its hold ends, never before its scheduled time.
            record.run_at = record.due(until)
        if not self.durable:
            if not self._backlog.try_reserve(len(records)):
                await self._backlog.reserve(len(records))
            return self._enqueue(records)
        self.liveness().beat()
        stored = self.group().submit_bulk(self.store.enqueue, records)
        try:
            kept = await asyncio.shield(stored)
        except asyncio.CancelledError:
            self._take_back(stored, records)
            raise
        if not self._checked_for_workers and self._claims is None:
            self._checked_for_workers = True
            self.group().submit(self._has_had_workers).add_done_callback(self._warn_no_workers)
        return kept

    def _take_back(
        self, stored: asyncio.Future[list[JobRecord]], records: Sequence[JobRecord]
    ) -> None:
        """The request failed while its jobs were being stored: once they are, cancel
        them, so that a failed request leaves nothing to run (but not the jobs kept
        under their ids already: those are another's)."""

        def cancel(done: asyncio.Future[list[JobRecord]]) -> None:
            if not done.cancelled() and done.exception() is None:
                kept = {id(r) for r in done.result()}
                ids = [r.id for r in records if id(r) not in kept]
                cancel = functools.partial(self.store.cancel, ids, "dropped: request failed")
                self.group().submit(cancel)

        stored.add_done_callback(cancel)

    def _has_had_workers(self) -> bool:
        return any(p.role == "worker" for p in self.store.processes())

    def _warn_no_workers(self, done: asyncio.Future[bool]) -> None:
        if done.cancelled() or done.exception() is not None or done.result():
            return
        logger.warning(
            "a request stored jobs in %s, but no worker runs in this process (no lifespan, "
            "or worker=False) and no worker has ever run on that store: they wait until one "
            "does. Run "
            "FastAPI(lifespan=errands.lifespan), or `errands worker module:errands`",
            self.store.location,
        )

    async def release(self, ids: Sequence[str]) -> None:
        try:
            if self.durable:
                released = self.group().submit_bulk(self.store.release, ids)
                # This loop's worker claims now: its claim joins the release's batch,
                # which runs its bulk writes first (one transaction, not two in turn).
                self._wanted()
                # Awaited, though the response is out: a short-lived event loop (TestClient
                # without its lifespan) must not close with the release still unwritten.
                # (Unshielded: cancelled, the batch writes it all the same.)
                await released
                return
            self.store.release(ids)
        except Exception as exc:
            # Were it lost, the jobs run once their owner is gone or their hold ends.
            logger.error("releasing jobs failed; they run when their hold ends: %s", exc)
            return
        self._wanted()

    async def cancel(self, ids: Sequence[str], reason: str) -> list[str]:
        cancelled = await self.write(functools.partial(self.store.cancel, ids, reason))
        for id in cancelled:
            self.finished(id)
        return cancelled

    def _wanted(self) -> None:
        claims = self._claims  # read once: the worker may stop in another thread
        if claims is not None:
            claims.wanted()
            claims.worker.offer()

    def finished(self, id: str) -> None:
        """Bookkeeping once a job reached a final state in this process."""
        if not self.durable:
            self._backlog.release(1)
        WAITERS.notify(id)

    # -- acting on jobs ---------------------------------------------------------------

    def cancel_job(self, id: str) -> JobRecord | None:
        record, cancelled = self.store.request_cancel(id)
        if cancelled:
            self.finished(id)
        return record

    def retry_job(self, id: str, max_attempts: int) -> JobRecord | None:
        if not self.durable:
            self._backlog.reserve_blocking(1)  # queued again: in memory again
        try:
            record = self.store.requeue_finished(id, max_attempts)
        except BaseException:
            if not self.durable:
                self._backlog.release(1)
            raise
        if not self.durable and (record is None or record.status is not JobStatus.QUEUED):
            self._backlog.release(1)
        self._wanted()
        return record

    # -- reading ----------------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        return self.store.get(id)

    def jobs(
        self, status: JobStatus | None, limit: int, task: str | None = None, offset: int = 0
    ) -> list[JobRecord]:
        return self.store.jobs(status, limit, task, offset)

    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        return self.store.purge(before, statuses, progress)

    def unfinished(self) -> int:
        return self.store.unfinished()

    def stats(self) -> Stats:
        seen_after = utcnow() - timedelta(seconds=self.lease)
        workers = [
            WorkerInfo(p.id, p.host, p.pid, p.tasks, p.started_at, p.seen_at)
            for p in self.store.processes()
            if p.role == "worker" and p.stopped_at is None and p.seen_at >= seen_after
        ]
        tasks = self.store.counts_by_task()
        runnable = {name for worker in workers for name in worker.tasks}
        unrunnable = {
            name: counts[JobStatus.QUEUED]
            for name, counts in tasks.items()
            if counts.get(JobStatus.QUEUED) and name not in runnable
        }
        activity = self.store.activity(utcnow())
        return Stats(self.store.counts(), tasks, workers, unrunnable, activity)

    # -- running ----------------------------------------------------------------------

    def source(self, worker: Worker) -> Source:
        if isinstance(self.store, Announcing) and self._unlisten is None:
            self._unlisten = self.store.listen(self._wanted)
        self._claims = Claims(self, worker, listening=self._unlisten is not None)
        return self._claims

    async def started(self, worker: Worker) -> None:
        self.liveness().sweep()
        self._schedule_purge()

    async def stopped(self) -> None:
        self._claims = None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._purge is not None:
            self._purge.cancel()
            self._purge = None
        loop = asyncio.get_running_loop()
        liveness = self._liveness.pop(loop)
        if liveness is not None:
            liveness.close()
        try:
            await self.write(functools.partial(self.store.stopped, self.process_id))
        except Exception as exc:
            logger.error("recording that this worker stopped failed: %s", exc)
        group = self._groups.pop(loop)
        if group is not None:
            await group.aclose()

    def _schedule_purge(self, delay: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        self._purge = loop.call_later(delay, self._start_purge)

    def _start_purge(self) -> None:
        asyncio.get_running_loop().run_in_executor(None, self._purge_now)
        self._schedule_purge(PURGE_EVERY)

    def _purge_now(self) -> None:
        """Delete jobs finished longer than ``retention`` ago (in a thread: may be slow)."""
        before = utcnow() - timedelta(seconds=self._options.retention)
        try:
            purged = self.store.purge(before)
        except Exception as exc:
            logger.error("purging finished jobs failed (%s); trying again later", exc)
            return
        if purged:
            logger.info("purged %d job(s) finished before %s", purged, before)

    def count_lost(self, lost: deque[str]) -> None:
        """Count the attempts the store found lost (their workers died: they could not)."""
        names = [lost.popleft() for _ in range(len(lost))]
        if self._metrics.counting is not None:
            self._metrics.lost(names)

    async def run_here(self, record: JobRecord) -> None:
        await self.runner.run_here(record)

    def give_back(self, job: JobRecord) -> None:
        # Written at once, on the loop: the loop may be closing (a shutdown past its
        # drain); this is rare.
        try:
            self.store.requeue(job)
        except Exception as exc:
            logger.error("giving back job %s failed (%s); it runs when its lease ends", job.id, exc)

    def run_worker(
        self, core: Core, *, concurrency: int | None, extra: Sequence[str], log_level: str
    ) -> None:
        from .._lifecycle import run_until_signalled

        if extra:
            raise ConfigurationError(
                f"Celery worker options {list(extra)} given, but this instance does not run "
                f"on Celery ({self.url})"
            )
        asyncio.run(run_until_signalled(core))
