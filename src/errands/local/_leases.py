"""Lease renewal: a process's running jobs keep their claims while they run.

One timer per Errands instance and event loop renews the leases of all the jobs
running there, every third of a lease, in one store call (for a durable store, one
write in the group commit, off the loop). A job started just after a renewal is
renewed at the next, within a third of its lease.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._record import JobRecord

if TYPE_CHECKING:
    from .._handover import Handover

logger = logging.getLogger("errands")


class Leases:
    def __init__(self, errands: Handover) -> None:
        self._errands = errands
        self._running: dict[str, JobRecord] = {}
        self._timer: asyncio.TimerHandle | None = None

    def hold(self, job: JobRecord) -> None:
        """Keep renewing ``job``'s lease until ``drop``."""
        self._running[job.id] = job
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._errands.lease / 3, self._renew
            )

    def drop(self, job: JobRecord) -> None:
        if self._running.get(job.id) is job:
            del self._running[job.id]

    def close(self) -> None:
        """Stop renewing (the loop's worker has stopped)."""
        self._running.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _renew(self) -> None:
        self._timer = None
        if not self._running:
            return  # the timer starts again with the next job
        self._timer = asyncio.get_running_loop().call_later(self._errands.lease / 3, self._renew)
        jobs = list(self._running.values())
        store = self._errands.store
        renew = functools.partial(store.heartbeat, jobs, self._errands.lease)
        if store.durable:
            self._errands.group().submit(renew).add_done_callback(
                lambda done: self._renewed(jobs, done.result)
            )
        else:
            self._renewed(jobs, renew)

    def _renewed(self, jobs: list[JobRecord], result: Callable[[], list[str]]) -> None:
        try:
            lost = result()
        except asyncio.CancelledError:
            return
        except Exception:
            ids = ", ".join(job.id for job in jobs)
            logger.exception("errands: could not renew the leases of jobs %s", ids)
            return
        for id in lost:
            if id in self._running:  # not a job that finished meanwhile
                logger.warning("errands: job %s lost its lease to another worker", id)
