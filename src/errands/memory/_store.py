"""The memory store: jobs live in this process and die with it.

Fast and dependency-free, for tests, development and work that may be lost on a
restart. Finished jobs are kept for lookups up to ``keep_finished``, oldest dropped
first, so memory stays flat however many jobs pass through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .._cancel import CANCELLED_QUEUED, CANCELLED_RUNNING
from .._limits import Limit
from .._record import JobRecord, JobStatus, utcnow
from .._tuning import KEEP_FINISHED, MAX_LOST_LEASES
from ..local._store import ProcessInfo, Want, poison_error
from ._queue import DueQueue
from ._reads import Reads

#: A lease: (until, tiebreak, job id).
_Lease = tuple[datetime, int, str]


class MemoryStore(Reads):
    durable = False
    location = "memory"

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self._keep_finished = keep_finished
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        # Jobs waiting for the job added before them in their request.
        self._dependents: dict[str, list[str]] = {}
        self._blocked: set[str] = set()
        # The queued jobs that are not blocked, by when they are due (see _queue).
        self._queue = DueQueue(self._jobs, self._blocked)
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._unfinished = 0
        # Leases of running jobs, soonest first; stale entries skipped, as the queue's.
        self._leases: list[_Lease] = []
        self.lost: deque[str] = deque()
        self._processes: dict[str, ProcessInfo] = {}
        # For task limits: running jobs by name, and each rate's bucket (tokens, when).
        self._running: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}
        #: Times a job became claimable (see local._store.Counting).
        self.changes = 0

    # -- writing ----------------------------------------------------------------

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        kept: list[JobRecord] = []
        with self._lock:
            for job in jobs:  # the store owns the records from here (see Store.enqueue)
                if job.id in self._jobs:
                    kept.append(job)
                    continue
                self._jobs[job.id] = job
                if not job.finished:
                    self._unfinished += 1
                before = self._jobs.get(job.after) if job.after else None
                if before is not None and not before.finished:
                    self._dependents.setdefault(before.id, []).append(job.id)
                    self._blocked.add(job.id)
                elif job.run_at is not None:
                    self._schedule(job)
        return kept

    def release(self, ids: Collection[str]) -> None:
        now = utcnow()
        with self._lock:
            for id in ids:
                job = self._jobs.get(id)
                if job is not None and self._unreleased(job):
                    self._release(job, now)

    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        cancelled = []
        with self._lock:
            for id in ids:
                job = self._jobs.get(id)
                if job is not None and job.status is JobStatus.QUEUED:
                    job.status = JobStatus.CANCELLED
                    job.error = reason
                    self._finish(job)
                    cancelled.append(id)
        return cancelled

    def claim(
        self,
        owner: str,
        lease: float,
        wants: Sequence[Want],
        limit: int | None = None,
        limits: Mapping[str, Limit] | None = None,
    ) -> list[JobRecord]:
        if limit is None:
            limit = sum(most for _, most in wants)
        limits = limits or {}
        now = utcnow()
        claimed: list[JobRecord] = []
        with self._lock:
            self._expire_leases(now)
            for names, most in wants:
                found = [(name, heap) for name in names if (heap := self._queue.ripe(name, now))]
                allowed: dict[str, int] = {}
                if limits:
                    allowed = {
                        name: self._allowed(name, limits[name], now)
                        for name, _ in found
                        if name in limits
                    }
                    found = [(name, heap) for name, heap in found if allowed.get(name, 1) > 0]
                taken = 0
                while taken < most and len(claimed) < limit and found:
                    if len(found) == 1:  # (the common case: no ranking; stale entries dropped)
                        name, heap = found[0]
                        self._queue.first(heap)
                    else:
                        name, heap = min(found, key=lambda entry: self._queue.first(entry[1]))
                    if not heap:
                        break  # none of these names has a due job left
                    job = self._jobs[self._queue.pop(heap)]
                    claimed.append(self._take(job, owner, lease, now))
                    taken += 1
                    if name in allowed:  # at its limit: the others go on past it
                        allowed[name] -= 1
                        self._spend(name, limits[name], now)
                        if allowed[name] <= 0:
                            found.remove((name, heap))
        return claimed

    def _allowed(self, name: str, limit: Limit, now: datetime) -> int:
        tokens = None
        if limit.rate is not None and (bucket := self._buckets.get(name)) is not None:
            tokens = limit.refill(*bucket, now.timestamp())
        return limit.allowed(self._running[name], tokens)

    def _spend(self, name: str, limit: Limit, now: datetime) -> None:
        """One token of the task's bucket, for an attempt claimed ``now``."""
        if limit.rate is None:
            return
        bucket = self._buckets.get(name)
        at = now.timestamp()
        tokens = limit.burst if bucket is None else limit.refill(*bucket, at)
        self._buckets[name] = (tokens - 1, at)

    def claim_ids(self, owner: str, lease: float, ids: Collection[str]) -> list[JobRecord]:
        now = utcnow()
        claimed: list[JobRecord] = []
        with self._lock:
            self._expire_leases(now)
            for id in ids:
                job = self._jobs.get(id)
                if job is not None and job.status is JobStatus.QUEUED and id not in self._blocked:
                    claimed.append(self._take(job, owner, lease, now))
        return claimed

    def renew(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        lost = []
        until = utcnow() + timedelta(seconds=lease)
        with self._lock:
            for job in jobs:
                current = self._current_claim(job)
                if current is None:
                    lost.append(job.id)
                else:
                    self._set_lease(current, until)
        return lost

    def complete(self, job: JobRecord, result: Any) -> JobStatus | None:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return None
            self._running[current.name] -= 1
            if self._stopped(current):
                return current.status
            current.status = JobStatus.SUCCEEDED
            current.result = result
            self._finish(current)
            return current.status

    def retry(
        self, job: JobRecord, error: str, traceback: str, run_at: datetime
    ) -> JobStatus | None:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return None
            self._running[current.name] -= 1
            current.traceback = traceback
            if self._stopped(current):
                return current.status
            current.error = error
            self._back_to_queue(current, run_at)
            return current.status

    def fail(self, job: JobRecord, error: str, traceback: str | None) -> JobStatus | None:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return None
            self._running[current.name] -= 1
            current.traceback = traceback
            if self._stopped(current):
                return current.status
            current.status = JobStatus.FAILED
            current.error = error
            self._finish(current)
            return current.status

    def requeue(self, job: JobRecord) -> JobStatus | None:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return None
            self._running[current.name] -= 1
            current.attempts -= 1  # the attempt was interrupted, not failed
            if self._stopped(current):
                return current.status
            self._back_to_queue(current, utcnow())
            return current.status

    def request_cancel(self, id: str) -> tuple[JobRecord | None, bool]:
        with self._lock:
            job = self._jobs.get(id)
            if job is None:
                return None, False
            cancelled = job.status is JobStatus.QUEUED
            if cancelled:
                job.status = JobStatus.CANCELLED
                job.error = CANCELLED_QUEUED
                self._finish(job)
            elif job.status is JobStatus.RUNNING and job.cancel_requested_at is None:
                job.cancel_requested_at = utcnow()
            return job.copy(), cancelled

    def cancelling(self, ids: Collection[str]) -> list[str]:
        with self._lock:
            return [
                id
                for id in ids
                if (job := self._jobs.get(id)) is not None
                and job.status is JobStatus.RUNNING
                and job.cancel_requested_at is not None
            ]

    def requeue_finished(self, id: str, max_attempts: int) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(id)
            if job is None:
                return None
            if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                self._finished.pop(id, None)
                self._unfinished += 1
                job.max_attempts = max_attempts
                job.result = job.finished_at = job.cancel_requested_at = None
                self._blocked.discard(id)  # what it waited for has finished long since
                self._back_to_queue(job, utcnow())
            return job.copy()

    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        kinds = set(statuses) if statuses is not None else None
        with self._lock:
            old = [
                id
                for id in self._finished
                if (finished := self._jobs[id].finished_at) is not None
                and finished < before
                and (kinds is None or self._jobs[id].status in kinds)
            ]
            for id in old:
                del self._finished[id]
                self._jobs.pop(id, None)
            for process in list(self._processes.values()):
                if process.stopped_at is not None and process.stopped_at < before:
                    del self._processes[process.id]
        if progress is not None:
            progress(len(old))
        return len(old)

    # -- processes --------------------------------------------------------------

    def beat(self, process: ProcessInfo) -> None:
        with self._lock:
            known = self._processes.get(process.id)
            self._processes[process.id] = dataclasses.replace(
                process,
                tasks=tuple(process.tasks),
                started_at=known.started_at if known is not None else process.started_at,
                seen_at=utcnow(),
                stopped_at=None,
            )

    def stopped(self, id: str) -> None:
        with self._lock:
            self._gone({id}, utcnow())

    def release_orphans(self, seen_before: datetime) -> list[str]:
        with self._lock:
            gone = [
                process.id
                for process in self._processes.values()
                if process.stopped_at is None and process.seen_at < seen_before
            ]
            if gone:
                self._gone(set(gone), utcnow())
        return gone

    def processes(self) -> list[ProcessInfo]:
        with self._lock:
            found = [dataclasses.replace(process) for process in self._processes.values()]
        return sorted(found, key=lambda process: process.seen_at, reverse=True)

    def close(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._queue.clear()
            self._dependents.clear()
            self._blocked.clear()
            self._leases.clear()
            self._finished.clear()
            self._unfinished = 0
            self._processes.clear()
            self._running.clear()
            self._buckets.clear()

    # -- internals (called with the lock held) ----------------------------------

    def _schedule(self, job: JobRecord) -> None:
        self.changes += 1
        self._queue.push(job, self._unfinished)

    def _unreleased(self, job: JobRecord) -> bool:
        # run_at None: held by a caller of the older kind, which set no owner.
        return (
            job.status is JobStatus.QUEUED
            and job.attempts == 0
            and (job.owner is not None or job.run_at is None)
        )

    def _release(self, job: JobRecord, now: datetime) -> None:
        job.run_at = job.due(now)
        job.owner = None
        if job.id not in self._blocked:
            self._schedule(job)

    def _gone(self, ids: set[str], now: datetime) -> None:
        """These processes stopped: mark them, and release what they held."""
        for id in ids:
            process = self._processes.get(id)
            if process is not None and process.stopped_at is None:
                process.stopped_at = now
        for job in self._jobs.values():
            if job.owner in ids and self._unreleased(job):
                self._release(job, now)

    def _take(self, job: JobRecord, owner: str, lease: float, now: datetime) -> JobRecord:
        self._running[job.name] += 1
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.owner = owner
        self._set_lease(job, now + timedelta(seconds=lease))
        job.started_at = now
        claimed = job.copy()
        # Each attempt gets arguments of its own: a task that changes them in place
        # must not change what the next attempt (or a reader) sees.
        if job.args:
            claimed.args = json.loads(json.dumps(job.args))
        if job.kwargs:
            claimed.kwargs = json.loads(json.dumps(job.kwargs))
        return claimed

    def _current_claim(self, job: JobRecord) -> JobRecord | None:
        current = self._jobs.get(job.id)
        if (
            current is None
            or current.status is not JobStatus.RUNNING
            or current.owner != job.owner
            or current.attempts != job.attempts
        ):
            return None
        return current

    def _expire_leases(self, now: datetime) -> None:
        while self._leases and self._leases[0][0] < now:
            until, _, id = heapq.heappop(self._leases)
            job = self._jobs.get(id)
            if job is not None and job.status is JobStatus.RUNNING and job.lease_until == until:
                self._running[job.name] -= 1
                job.lost += 1
                self.lost.append(job.name)
                if self._stopped(job):
                    continue
                if job.lost >= MAX_LOST_LEASES:
                    job.status = JobStatus.FAILED
                    job.error, job.traceback = poison_error(job.lost), None
                    self._finish(job)
                else:
                    self._back_to_queue(job, now)

    def _stopped(self, job: JobRecord) -> bool:
        """End a running job cancelled if it was asked to stop; whether it was."""
        if job.cancel_requested_at is None:
            return False
        job.status = JobStatus.CANCELLED
        job.error = CANCELLED_RUNNING
        job.result = None
        self._finish(job)
        return True

    def _set_lease(self, job: JobRecord, until: datetime) -> None:
        job.lease_until = until
        heapq.heappush(self._leases, (until, self._queue.tiebreak(), job.id))

    def _back_to_queue(self, job: JobRecord, run_at: datetime) -> None:
        job.status = JobStatus.QUEUED
        job.owner = None
        job.lease_until = None
        job.run_at = run_at
        if job.id not in self._blocked:
            self._schedule(job)

    def _finish(self, job: JobRecord) -> None:
        """The job has just reached a final state (from queued or running)."""
        self._unfinished -= 1
        job.finished_at = utcnow()
        job.owner = None
        job.lease_until = None
        for dependent in self._dependents.pop(job.id, ()):
            self._blocked.discard(dependent)
            waiting = self._jobs.get(dependent)
            if (
                waiting is not None
                and waiting.status is JobStatus.QUEUED
                and waiting.run_at is not None
            ):
                self._schedule(waiting)
        self._finished[job.id] = None
        while len(self._finished) > self._keep_finished:
            oldest, _ = self._finished.popitem(last=False)
            self._jobs.pop(oldest, None)
