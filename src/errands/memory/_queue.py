"""The memory store's queue: which queued jobs are due, and in which order a claim
takes them.

Queued, unblocked jobs with a ``run_at`` wait in a heap by due time, one heap a task
name (a claim takes only the names it wants); once due, a claim moves them to the
name's ready heap, by priority, then due time, then the order added. Entries go stale
when a job changes state: claims skip those rather than search the heaps, and
``compact`` drops them should they pile up (every held job leaves one when it is
released). The store calls every method with its lock held.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

from .._record import JobRecord, JobStatus

#: A heap entry of a job not yet due: (due time, tiebreak, job id).
Entry = tuple[datetime, int, str]
#: Of a due job: (-priority, due time, tiebreak, job id): the first is claimed first.
Ready = tuple[int, datetime, int, str]
_NEVER = (1 << 62, datetime.max.replace(tzinfo=UTC), 0)


class DueQueue:
    def __init__(self, jobs: dict[str, JobRecord], blocked: set[str]) -> None:
        self._jobs = jobs  # the store's: read, never changed here
        self._blocked = blocked
        self._due: dict[str, list[Entry]] = {}
        self._ready: dict[str, list[Ready]] = {}
        self._entries = 0
        self.tiebreak: Callable[[], int] = itertools.count().__next__

    def push(self, job: JobRecord, unfinished: int) -> None:
        """Queue ``job`` (queued, unblocked, with a ``run_at``); ``unfinished``: how
        many jobs the store holds unfinished (entries beyond twice that are stale)."""
        assert job.run_at is not None
        heapq.heappush(self._due.setdefault(job.name, []), (job.run_at, self.tiebreak(), job.id))
        self._entries += 1
        if self._entries > 2 * unfinished + 1024:
            self.compact()

    def ripe(self, name: str, now: datetime) -> list[Ready] | None:
        """The ready heap of ``name``, with its jobs that have fallen due moved in."""
        due = self._due.get(name)
        ready = self._ready.get(name)
        while due and due[0][0] <= now:
            run_at, tiebreak, id = heapq.heappop(due)
            if not self._live(run_at, id):
                self._entries -= 1
                continue
            if ready is None:
                ready = self._ready[name] = []
            heapq.heappush(ready, (-self._jobs[id].priority, run_at, tiebreak, id))
        return ready

    def first(self, heap: list[Ready]) -> tuple[int, datetime, int]:
        """The rank of the heap's first live entry (stale ones are dropped on the
        way); empty heaps sort last."""
        while heap:
            rank, run_at, tiebreak, id = heap[0]
            if self._live(run_at, id):
                return rank, run_at, tiebreak
            heapq.heappop(heap)
            self._entries -= 1
        return _NEVER

    def pop(self, heap: list[Ready]) -> str:
        """Take the first entry of a ready heap (``first`` has found it live); its id."""
        self._entries -= 1
        return heapq.heappop(heap)[3]

    def compact(self) -> None:
        for name, heap in list(self._due.items()):
            live = [entry for entry in heap if self._live(entry[0], entry[2])]
            if live:
                heapq.heapify(live)
                self._due[name] = live
            else:
                del self._due[name]
        for name, ready in list(self._ready.items()):
            kept = [entry for entry in ready if self._live(entry[1], entry[3])]
            if kept:
                heapq.heapify(kept)
                self._ready[name] = kept
            else:
                del self._ready[name]
        self._entries = len(self)

    def __len__(self) -> int:
        """Entries in the heaps, stale ones included."""
        return sum(len(heap) for heap in self._due.values()) + sum(
            len(heap) for heap in self._ready.values()
        )

    def clear(self) -> None:
        self._due.clear()
        self._ready.clear()
        self._entries = 0

    def _live(self, run_at: datetime, id: str) -> bool:
        job = self._jobs.get(id)
        return (
            job is not None
            and job.status is JobStatus.QUEUED
            and job.run_at == run_at
            and id not in self._blocked
        )
