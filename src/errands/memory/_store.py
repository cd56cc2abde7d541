"""The memory store: jobs live in this process and die with it.

Fast and dependency-free, for tests, development and work that may be lost on a
restart. Finished jobs are kept for lookups up to ``keep_finished``, oldest dropped
first, so memory stays flat however many jobs pass through.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from .._record import JobRecord, JobStatus, utcnow
from ..local._store import MAX_LOST_LEASES, poison_error


class MemoryStore:
    durable = False
    claims = True

    def __init__(self, keep_finished: int = 10_000) -> None:
        self._keep_finished = keep_finished
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        # Queued, unblocked jobs with a run_at, by due time. Entries go stale when a
        # job changes state; claim() skips those rather than searching the heap.
        self._due: list[tuple[datetime, int, str]] = []
        self._tiebreak = itertools.count()
        # Jobs waiting for the job added before them in their request.
        self._dependents: dict[str, list[str]] = {}
        self._blocked: set[str] = set()
        self._finished: OrderedDict[str, None] = OrderedDict()
        # Leases of running jobs, soonest first; stale entries skipped as in _due.
        self._leases: list[tuple[datetime, int, str]] = []

    # -- writing ----------------------------------------------------------------

    def enqueue(self, jobs: Sequence[JobRecord]) -> None:
        with self._lock:
            for job in jobs:  # the store owns the records from here (see Store.enqueue)
                self._jobs[job.id] = job
                before = self._jobs.get(job.after) if job.after else None
                if before is not None and not before.finished:
                    self._dependents.setdefault(before.id, []).append(job.id)
                    self._blocked.add(job.id)
                elif job.run_at is not None:
                    self._schedule(job)

    def release(self, ids: Collection[str]) -> None:
        now = utcnow()
        with self._lock:
            for id in ids:
                job = self._jobs.get(id)
                if job is not None and job.status is JobStatus.QUEUED and job.run_at is None:
                    job.run_at = now
                    if id not in self._blocked:
                        self._schedule(job)

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
        self, owner: str, limit: int, lease: float, ids: Collection[str] | None = None
    ) -> list[JobRecord]:
        now = utcnow()
        claimed: list[JobRecord] = []
        with self._lock:
            self._expire_leases(now)
            if ids is not None:
                for id in ids:
                    job = self._jobs.get(id)
                    if len(claimed) < limit and job is not None and self._claimable_by_id(job):
                        claimed.append(self._take(job, owner, lease, now))
                return claimed
            while self._due and len(claimed) < limit and self._due[0][0] <= now:
                run_at, _, id = heapq.heappop(self._due)
                job = self._jobs.get(id)
                if job is None or job.status is not JobStatus.QUEUED or job.run_at != run_at:
                    continue  # a stale entry: the job moved on since it was scheduled
                if id in self._blocked:
                    continue
                claimed.append(self._take(job, owner, lease, now))
        return claimed

    def heartbeat(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        lost = []
        until = utcnow() + timedelta(seconds=lease)
        with self._lock:
            for job in jobs:
                current = self._current_claim(job)
                if current is None:
                    lost.append(job.id)
                else:
                    self._hold_lease(current, until)
        return lost

    def complete(self, job: JobRecord, result: Any) -> bool:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return False
            current.status = JobStatus.SUCCEEDED
            current.result = result
            self._finish(current)
            return True

    def retry(self, job: JobRecord, error: str, traceback: str, run_at: datetime | None) -> bool:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return False
            current.error, current.traceback = error, traceback
            self._back_to_queue(current, run_at)
            return True

    def fail(self, job: JobRecord, error: str, traceback: str | None) -> bool:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return False
            current.status = JobStatus.FAILED
            current.error, current.traceback = error, traceback
            self._finish(current)
            return True

    def requeue(self, job: JobRecord) -> bool:
        with self._lock:
            current = self._current_claim(job)
            if current is None:
                return False
            current.attempts -= 1  # the attempt was interrupted, not failed
            self._back_to_queue(current, utcnow())
            return True

    def purge(self, before: datetime) -> int:
        with self._lock:
            old = [
                id
                for id in self._finished
                if (finished := self._jobs[id].finished_at) is not None and finished < before
            ]
            for id in old:
                del self._finished[id]
                self._jobs.pop(id, None)
        return len(old)

    # -- reading ----------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(id)
            return job.copy() if job is not None else None

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        found: list[JobRecord] = []
        with self._lock:
            for job in reversed(self._jobs.values()):
                if len(found) >= limit:
                    break
                if status is None or job.status is status:
                    found.append(job.copy())
        return found

    def counts(self) -> dict[JobStatus, int]:
        with self._lock:
            counted = Counter(job.status for job in self._jobs.values())
        return {status: counted.get(status, 0) for status in JobStatus}

    def unfinished(self) -> int:
        with self._lock:
            return sum(not job.status.finished for job in self._jobs.values())

    def close(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._due.clear()
            self._dependents.clear()
            self._blocked.clear()
            self._leases.clear()
            self._finished.clear()

    # -- internals (called with the lock held) ----------------------------------

    def _schedule(self, job: JobRecord) -> None:
        assert job.run_at is not None
        heapq.heappush(self._due, (job.run_at, next(self._tiebreak), job.id))

    def _claimable_by_id(self, job: JobRecord) -> bool:
        return job.status is JobStatus.QUEUED and job.id not in self._blocked

    def _take(self, job: JobRecord, owner: str, lease: float, now: datetime) -> JobRecord:
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.owner = owner
        self._hold_lease(job, now + timedelta(seconds=lease))
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
                job.lost += 1
                if job.lost >= MAX_LOST_LEASES:
                    job.status = JobStatus.FAILED
                    job.error, job.traceback = poison_error(job.lost), None
                    self._finish(job)
                else:
                    self._back_to_queue(job, now)

    def _hold_lease(self, job: JobRecord, until: datetime) -> None:
        job.lease_until = until
        heapq.heappush(self._leases, (until, next(self._tiebreak), job.id))

    def _back_to_queue(self, job: JobRecord, run_at: datetime | None) -> None:
        job.status = JobStatus.QUEUED
        job.owner = None
        job.lease_until = None
        job.run_at = run_at
        if run_at is not None and job.id not in self._blocked:
            self._schedule(job)

    def _finish(self, job: JobRecord) -> None:
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
