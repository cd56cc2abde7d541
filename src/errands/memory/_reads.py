"""The memory store's reads: a job, listings, counts and recent activity, each under
the store's lock, and copies of its records (a caller may change what it gets)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime

from .._record import JobRecord, JobStatus
from .._stats import Activity, activity


class Reads:
    # The store's (see MemoryStore.__init__).
    _lock: threading.Lock
    _jobs: dict[str, JobRecord]
    _unfinished: int

    def get(self, id: str) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(id)
            return job.copy() if job is not None else None

    def jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        name: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        found: list[JobRecord] = []
        with self._lock:
            for job in reversed(self._jobs.values()):
                if len(found) >= limit:
                    break
                if (status is None or job.status is status) and name in (None, job.name):
                    if offset:
                        offset -= 1
                    else:
                        found.append(job.copy())
        return found

    def activity(self, now: datetime) -> Activity:
        with self._lock:
            records = list(self._jobs.values())  # read outside the lock: a snapshot will do
        return activity(records, now)

    def counts(self) -> dict[JobStatus, int]:
        with self._lock:
            counted = Counter(job.status for job in self._jobs.values())
        return {status: counted.get(status, 0) for status in JobStatus}

    def counts_by_task(self) -> dict[str, dict[JobStatus, int]]:
        with self._lock:
            counted = Counter((job.name, job.status) for job in self._jobs.values())
        by_task: dict[str, dict[JobStatus, int]] = {}
        for (name, status), n in counted.items():
            by_task.setdefault(name, {})[status] = n
        return by_task

    def unfinished(self) -> int:
        return self._unfinished  # one read of an int: needs no lock
