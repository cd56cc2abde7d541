"""The worker in this process: runs jobs, up to ``concurrency`` at a time.

It takes work from two places: the lanes of plain callables (a request's plain
jobs, one after another), and the backend's ``Source`` of stored jobs, if it has
one (Celery's workers take those elsewhere). Work handed over on the worker's own
event loop starts at once; from elsewhere it wakes the loop. Otherwise the loop
sleeps until a retry falls due or the source's poll interval passes (other
processes may add jobs to a shared store).

The worker is asyncio-native on its hot path: one request's hand-over costs one
task, and no cancel scope.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._plain import PlainJob, PlainJobs
from ._threads import Threads
from ._tuning import POLL_LOCAL

if TYPE_CHECKING:
    from ._backend import Source

logger = logging.getLogger("errands")


class Worker:
    def __init__(
        self, *, concurrency: int, plain: PlainJobs, threads: Threads, owns_loop: bool = False
    ) -> None:
        self.concurrency = concurrency
        #: Its event loop runs nothing else (``errands worker``): while it is idle, a
        #: store may claim on the loop itself, which then waits for nobody.
        self.owns_loop = owns_loop
        self.source: Source | None = None
        self._plain = plain
        self._threads = threads
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserved = 0  # slots held for claims in flight
        self._stopping = False
        self._due: list[float] = []  # when retries of this worker's jobs fall due
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._context = contextvars.Context()
        #: Why the worker can no longer take stored jobs (a store that will not heal).
        self.failure: BaseException | None = None
        #: Called with it (``errands worker`` then exits).
        self.on_failure: Callable[[BaseException], None] | None = None

    def failed(self, exc: BaseException) -> None:
        self.failure = exc
        if self.on_failure is not None:
            self.on_failure(exc)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def on_own_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def wake(self) -> None:
        """Look for work now. Safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if self.on_own_loop():
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def offer(self) -> None:
        """New work was handed over: start it now if we are on the worker's loop."""
        if self._stopping or self._loop is None:
            return
        if self.on_own_loop():
            self.fill()
        else:
            self.wake()

    def wake_at(self, when: float) -> None:
        """Look for work at ``when`` (``time.monotonic()``), e.g. when a retry is due."""
        heapq.heappush(self._due, when)
        if self._wake is not None and self.on_own_loop():
            self._wake.set()

    def start_loop(self) -> None:
        """Start on the running event loop; returns at once."""
        self._loop = asyncio.get_running_loop()
        # Jobs run in a context of their own, not that of whichever request
        # happened to hand work over (its request ids, spans, sessions).
        self._context = contextvars.copy_context()
        self._wake = asyncio.Event()
        self._main = self._loop.create_task(self._run(), context=self._context.copy())

    async def _run(self) -> None:
        loop, wake = self._loop, self._wake
        assert loop is not None and wake is not None
        while not self._stopping:
            wake.clear()
            if self.source is not None:
                self.source.wanted()  # a poll: other processes may have added jobs
            self.fill()
            timer = loop.call_later(self._sleep_for(), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    def _sleep_for(self) -> float:
        poll = self.source.poll_interval if self.source is not None else POLL_LOCAL
        now = time.monotonic()
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
        return min(poll, self._due[0] - now) if self._due else poll

    async def stop(self, drain_timeout: float) -> bool:
        """Stop taking work; wait up to ``drain_timeout`` for running jobs. True if drained."""
        self._stopping = True
        self.wake()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=drain_timeout)
        return not self._tasks

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel whatever still runs (registered jobs go back to the queue)."""
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
        for task in self._tasks:
            task.cancel()
        pending = {t for t in (*self._tasks, self._main) if t is not None}
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=timeout)
            if stuck:
                logger.error(
                    "%d job(s) did not stop within %g s of being cancelled; leaving them behind",
                    len(stuck),
                    timeout,
                )
        self._loop = None

    # -- slots ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing runs, and no claim is in flight."""
        return not self._tasks and not self._reserved

    def free(self) -> int:
        """Slots for more jobs now."""
        return self.concurrency - len(self._tasks) - self._reserved

    def reserve(self, slots: int) -> None:
        """Hold ``slots`` for a claim in flight (a store that claims off the loop)."""
        self._reserved += slots

    def unreserve(self, slots: int) -> None:
        self._reserved -= slots

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (one job) in a slot."""
        assert self._loop is not None
        task = self._loop.create_task(self._slot(coro), context=self._context.copy())
        self._tasks.add(task)

    async def _slot(self, coro: Coroutine[Any, Any, None]) -> None:
        # The slot's bookkeeping in the task itself: cheaper than a done callback (one
        # more turn of the loop a job).
        try:
            await coro
        except Exception as exc:
            logger.error("a worker task crashed", exc_info=exc)
        finally:
            self._tasks.discard(asyncio.current_task())
            if not self._stopping:
                # A slot is free, and a finished job may unblock the next.
                self.fill(batch=True)

    def fill(self, *, batch: bool = False) -> None:
        """Start what waits, in the free slots."""
        free = self.concurrency - len(self._tasks) - self._reserved
        if self._stopping or free <= 0:
            return
        source, lanes = self.source, self._plain.lanes
        if not lanes:
            if source is not None:
                source.fill(free, batch=batch)
            return
        if source is not None:
            # With plain lanes waiting, half the free slots go to the source first,
            # so a steady stream of either kind cannot starve the other.
            source.fill((free + 1) // 2, batch=batch)
        while lanes and self.free() > 0:
            lane = lanes.popleft()
            if isinstance(lane, PlainJob):  # a lane of one job: run it as it is
                self.start(self._plain.run(lane, self._threads))
            else:
                self.start(self._run_lane(lane))
        if source is not None and (free := self.free()) > 0:
            source.fill(free, batch=batch)

    async def _run_lane(self, jobs: list[PlainJob]) -> None:
        lanes, run = self._plain.lanes, self._plain.run
        for index, job in enumerate(jobs):
            if self._stopping:
                lanes.appendleft(jobs[index:])  # draining: start nothing new
                return
            try:
                await run(job, self._threads)
            except asyncio.CancelledError:
                # Put back what had not started, for the next worker of this process.
                if index + 1 < len(jobs):
                    lanes.appendleft(jobs[index + 1 :])
                raise
