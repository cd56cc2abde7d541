"""Liveness: what this process keeps telling the store, so that others can tell
whether it lives.

One timer per backend and event loop, every third of a lease, in the group commit:

- renews the leases of the jobs running here (a job that runs longer than its
  lease is never taken from a live worker);
- beats: refreshes this process's row (``Store.beat``), from the first job it
  adds or the start of its worker on, so that jobs it added and has not yet
  released wait for it only while it lives;
- where the worker runs, sweeps: the unreleased jobs of processes that stopped
  beating for a lease are released (``Store.release_orphans``), so that a web
  process killed between storing a request's jobs and sending its response delays
  them by about a lease, not by the whole ``hold``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._cancel import Stop
from .._record import JobRecord, utcnow
from .._tuning import CANCEL_POLL

if TYPE_CHECKING:
    from ._backend import LocalBackend

logger = logging.getLogger("errands")


class Liveness:
    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self._running: dict[str, JobRecord] = {}
        # What stops each running job, should errands.cancel be called for it.
        self._stops: dict[str, Stop] = {}
        self._asking: weakref.ref[asyncio.TimerHandle] | None = None
        # Weakly: a handle keeps its loop, and this object (in a table keyed weakly by
        # the loop) must not, or neither would ever go.
        self._timer: weakref.ref[asyncio.TimerHandle] | None = None
        self._beating = False  # this process has added jobs, or runs a worker, here
        self._sweeping = False  # this loop runs the worker

    def track(self, job: JobRecord, stop: Stop | None = None) -> None:
        """Keep renewing ``job``'s lease until ``untrack``; meanwhile, about once a
        second, ask the store whether it was asked to stop: then request ``stop``."""
        self._running[job.id] = job
        if stop is not None:
            self._stops[job.id] = stop
        self._arm()
        if self._asking is None or self._asking() is None:
            timer = asyncio.get_running_loop().call_later(CANCEL_POLL, self._ask)
            self._asking = weakref.ref(timer)

    def untrack(self, job: JobRecord) -> None:
        if self._running.get(job.id) is job:
            del self._running[job.id]
            self._stops.pop(job.id, None)

    def _ask(self) -> None:
        self._asking = None
        if not self._stops:
            return
        ids = list(self._stops)
        self._submit(self._backend.store.cancelling, ids, done=self._stop)
        timer = asyncio.get_running_loop().call_later(CANCEL_POLL, self._ask)
        self._asking = weakref.ref(timer)

    def _stop(self, ids: list[str]) -> None:
        for id in ids:
            stop = self._stops.get(id)  # None: finished meanwhile
            if stop is not None and stop.request():
                logger.info("job %s was asked to stop (errands.cancel)", id)

    def beat(self) -> None:
        """Start beating (once this loop added a request's jobs); the first beat goes
        into the next group of writes, with those jobs."""
        if not self._beating:
            self._beating = True
            self._submit(self._backend.store.beat, self._backend.process_info())
            self._arm()

    def sweep(self) -> None:
        """This loop runs the worker: beat as a worker (at once), and sweep for orphans."""
        self._sweeping = True
        self._beating = False
        self.beat()

    def close(self) -> None:
        """Stop (the loop's worker has stopped)."""
        self._running.clear()
        self._stops.clear()
        asking = self._asking() if self._asking is not None else None
        if asking is not None:
            asking.cancel()
        self._asking = None
        self._beating = self._sweeping = False
        timer = self._timer() if self._timer is not None else None
        if timer is not None:
            timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        if self._timer is None or self._timer() is None:
            timer = asyncio.get_running_loop().call_later(self._backend.lease / 3, self._tick)
            self._timer = weakref.ref(timer)

    def _tick(self) -> None:
        self._timer = None
        backend = self._backend
        store, lease = backend.store, backend.lease
        if self._running:
            jobs = list(self._running.values())
            self._submit(store.renew, jobs, lease, done=functools.partial(self._renewed, jobs))
        if self._beating:
            self._submit(store.beat, backend.process_info())
        if self._sweeping:
            seen_before = utcnow() - timedelta(seconds=lease)
            self._submit(store.release_orphans, seen_before, done=self._swept)
        if self._running or self._beating:
            self._arm()

    def _submit(
        self,
        write: Callable[..., Any],
        *args: Any,
        done: Callable[[Any], None] | None = None,
    ) -> None:
        backend = self._backend

        def settle(result: Callable[[], Any]) -> None:
            try:
                value = result()
            except asyncio.CancelledError:
                return
            except Exception as exc:
                logger.error("%s failed: %s", getattr(write, "__name__", "a write"), exc)
                return
            if done is not None:
                done(value)

        call = functools.partial(write, *args)
        if backend.durable:
            backend.group().submit(call).add_done_callback(lambda future: settle(future.result))
        else:
            settle(call)

    def _renewed(self, jobs: list[JobRecord], lost: list[str]) -> None:
        for id in lost:
            if id in self._running:  # not a job that finished meanwhile
                logger.warning("job %s lost its lease to another worker", id)

    @staticmethod
    def _swept(gone: list[str]) -> None:
        for id in gone:
            logger.warning(
                "process %s stopped without a word; the jobs it had added and not yet "
                "released may run now",
                id,
            )
