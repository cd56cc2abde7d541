"""The worker: claims jobs and runs them, up to ``concurrency`` at a time.

It takes work from two places: the store (registered tasks, claimed with a lease)
and the in-process lanes (a request's plain callables, run one after another).
It sleeps until woken by new work, a finished job, or the next retry falling due.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._job import JobRecord, utcnow
from ._runner import LocalJob

if TYPE_CHECKING:
    from ._errands import Errands

logger = logging.getLogger("errands")

#: Errands instances whose worker runs on each event loop: where a request's plain
#: callables go when nothing else names an instance.
_RUNNING: dict[asyncio.AbstractEventLoop, list[Errands]] = {}


def running_instance() -> Errands | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    instances = _RUNNING.get(loop)
    return instances[0] if instances else None


class Worker:
    def __init__(self, errands: Errands, *, concurrency: int, poll_interval: float = 1.0) -> None:
        self.errands = errands
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.id = f"worker-{uuid.uuid4().hex[:12]}"
        self._busy = 0
        self._stopping = False
        self._due: list[float] = []  # when retries of this worker's jobs fall due
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._stopping

    def wake(self) -> None:
        """Look for work now. Safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        _RUNNING.setdefault(self._loop, []).append(self.errands)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while not self._stopping:
                    self._wake.clear()
                    self._fill(tg)
                    with anyio.move_on_after(self._sleep_for()):
                        await self._wake.wait()
                # Stopping: no new claims; the task group waits for the running jobs.
        finally:
            _RUNNING[self._loop].remove(self.errands)
            if not _RUNNING[self._loop]:
                del _RUNNING[self._loop]
            self._loop = None

    async def stop(self, drain_timeout: float) -> bool:
        """Stop claiming; wait up to ``drain_timeout`` for running jobs. True if drained."""
        self._stopping = True
        self.wake()
        deadline = time.monotonic() + drain_timeout
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._busy == 0

    def _sleep_for(self) -> float:
        now = time.monotonic()
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
        if self._due:
            return min(self.poll_interval, self._due[0] - now)
        return self.poll_interval

    def _fill(self, tg: TaskGroup) -> None:
        lanes = self.errands.lanes
        while self._busy < self.concurrency and lanes:
            self._busy += 1
            tg.start_soon(self._run_lane, lanes.popleft())
        free = self.concurrency - self._busy
        if free <= 0:
            return
        try:
            claimed = self.errands.store.claim(self.id, free, self.errands.lease)
        except Exception:
            logger.exception("errands: claiming jobs failed; retrying")
            return
        for job in claimed:
            self._busy += 1
            tg.start_soon(self._run_stored, job)

    async def _run_lane(self, lane: list[LocalJob]) -> None:
        finished = self.errands.job_finished
        try:
            for index, job in enumerate(lane):
                try:
                    await self.errands.runner.run_local(job, finished)
                except anyio.get_cancelled_exc_class():
                    # Put back what had not started, for the next worker of this process.
                    if index + 1 < len(lane):
                        self.errands.lanes.appendleft(lane[index + 1 :])
                    raise
        finally:
            self._busy -= 1
            self.wake()

    async def _run_stored(self, job: JobRecord) -> None:
        try:
            retry_at = await self.errands.runner.run_stored(self.errands, job)
            if retry_at is not None:
                # Wake when the retry falls due, rather than at the next poll.
                delay = (retry_at - utcnow()).total_seconds()
                heapq.heappush(self._due, time.monotonic() + max(0.0, delay))
        finally:
            self._busy -= 1
            self.wake()
