"""What requests and workers hand to an Errands instance: a request's jobs stored
before its response (committed to the store, or published in Celery mode), released
after it or taken back when it failed; plain callables handed to this process's
worker; the bookkeeping once a job has finished. A part of ``Errands``."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._backlog import Backlog
from ._group_commit import GroupCommit
from ._loops import PerLoop, for_loop
from ._record import JobRecord, utcnow
from ._runner import LocalJob, Runner
from ._waiters import WAITERS
from .local._leases import Leases
from .local._store import Store

if TYPE_CHECKING:
    from ._worker import Worker
    from .celery import CeleryStore

logger = logging.getLogger("errands")

T = TypeVar("T")

#: Finished plain-callable jobs kept for ``errands.get()``, oldest dropped first.
KEEP_LOCAL_FINISHED = 10_000


class Handover:
    store: Store
    hold: float
    lease: float
    runner: Runner
    lanes: deque[LocalJob | list[LocalJob]]
    _backlog: Backlog
    _local: dict[str, JobRecord]
    _local_finished: deque[str]
    _local_lock: threading.Lock
    _worker: Worker | None
    _groups: PerLoop[GroupCommit]
    _leases: PerLoop[Leases]

    @property
    def celery_store(self) -> CeleryStore:
        from .celery import CeleryStore

        assert isinstance(self.store, CeleryStore)
        return self.store

    async def commit(self, records: Sequence[JobRecord]) -> None:
        """Store a request's registered jobs, held until ``release``.

        In a durable store the hold expires after ``hold`` seconds, so that the jobs
        of a request whose server died before sending the response in full still run.
        """
        if not self.store.claims:
            await self._publish(records)
            return
        if self.store.durable:
            until = utcnow() + timedelta(seconds=self.hold)
            for record in records:
                if record.run_at is None:
                    record.run_at = until
            stored = self.group().submit_bulk(self.store.enqueue, records)
            try:
                await asyncio.shield(stored)
            except asyncio.CancelledError:
                self._take_back(stored, records)
                raise
            return
        await self._backlog.reserve(len(records))
        try:
            self.store.enqueue(records)
        except BaseException:
            self._backlog.release(len(records))
            raise

    async def _publish(self, records: Sequence[JobRecord]) -> None:
        """Celery mode: publish a request's jobs, within ``publish_timeout``."""
        store = self.celery_store
        # Requests' publishes gather while one batch is being sent, like group commit:
        # one hand-over to a thread for many requests.
        deadline = time.monotonic() + store.publish_timeout

        def publish() -> None:
            if time.monotonic() > deadline:  # its request has failed already: skip it
                raise store.timed_out(records)
            store.enqueue(records)

        published = self.group().submit(publish)
        try:
            await asyncio.wait_for(asyncio.shield(published), store.publish_timeout)
        except TimeoutError:
            # It may still reach the broker; its jobs then run (at least once).
            raise store.timed_out(records) from None
        except asyncio.CancelledError:
            self._take_back(published, records)
            raise

    def _take_back(self, stored: asyncio.Future[Any], records: Sequence[JobRecord]) -> None:
        """The request failed while its jobs were being stored: once they are, cancel
        them, so that a failed request leaves nothing to run."""
        ids = [r.id for r in records]

        def cancel(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception():
                return
            self.group().submit(
                functools.partial(self.store.cancel, ids, "dropped: request failed")
            )

        stored.add_done_callback(cancel)

    async def reserve(self, n: int) -> None:
        await self._backlog.reserve(n)

    def adopt_local(self, records: Sequence[JobRecord]) -> None:
        """Keep plain jobs' records for ``get()``; their backlog room is reserved."""
        with self._local_lock:
            for record in records:
                self._local[record.id] = record

    async def release(self, ids: Sequence[str]) -> None:
        """Make a request's held jobs runnable (after its response has been sent)."""
        if not self.store.claims:
            return  # published, not held
        try:
            # Awaited, though the response is out: a short-lived event loop (TestClient
            # without its lifespan) must not close with the release still unwritten.
            await self._write_bulk(self.store.release, ids)
        except Exception as exc:
            # Were it lost, the jobs' hold runs out and they run all the same.
            logger.error("errands: releasing jobs failed; they run when their hold ends: %s", exc)
            return
        self.offer(stored=True)

    def leases(self) -> Leases:
        """Who renews the leases of this instance's jobs running on this loop."""
        return for_loop(self._leases, lambda: Leases(self))

    def group(self) -> GroupCommit:
        return for_loop(self._groups, lambda: GroupCommit(self.store))

    async def read(self, call: Callable[[], T]) -> T:
        """A read of the store: off the event loop when the store is remote (Celery
        mode reads its result backend), at once otherwise."""
        if self.store.claims:
            return call()
        return await anyio.to_thread.run_sync(call)

    async def write(self, operation: Callable[..., T], *args: Any) -> T:
        """A store write: at once for the memory store, grouped for a durable one."""
        if not self.store.durable:
            return operation(*args)
        return await self.group().write(functools.partial(operation, *args))

    async def _write_bulk(self, method: Callable[[Sequence[T]], None], items: Sequence[T]) -> None:
        """A store write that may share one call with others (see ``GroupCommit``)."""
        if not self.store.durable:
            method(items)
            return
        await asyncio.shield(self.group().submit_bulk(method, items))

    def cancel(self, records: Sequence[JobRecord], reason: str) -> None:
        cancelled = set(self.store.cancel([r.id for r in records], reason))
        for record in records:
            if record.id in cancelled:
                self.job_finished(record)

    def submit_lane(self, lane: list[LocalJob]) -> None:
        self.lanes.append(lane[0] if len(lane) == 1 else lane)
        self.offer()

    def offer(self, *, stored: bool = False) -> None:
        """Tell this process's worker, if any, that there is new work."""
        worker = self._worker  # read once: the lifespan may end in another thread
        if worker is not None:
            worker.offer(stored=stored)

    def job_finished(self, record: JobRecord) -> None:
        """Bookkeeping once a job reached a final state in this process."""
        if not record.durable:
            self._backlog.release(1)
        if record.id in self._local:
            with self._local_lock:
                self._local_finished.append(record.id)
                while len(self._local_finished) > KEEP_LOCAL_FINISHED:
                    self._local.pop(self._local_finished.popleft(), None)
        WAITERS.notify(record.id)
