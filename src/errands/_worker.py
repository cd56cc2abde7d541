"""The worker: claims jobs and runs them, up to ``concurrency`` at a time.

It takes work from two places: the store (registered tasks, claimed with a lease)
and the in-process lanes (a request's plain callables, run one after another).
Work handed over on the worker's own event loop starts at once; from elsewhere it
wakes the loop. Otherwise the loop sleeps until the next retry falls due or the
poll interval passes (other processes may add jobs to a shared store).

The worker is asyncio-native on its hot path: one request's hand-over costs one
task, and no cancel scope.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._record import JobRecord, utcnow
from ._runner import LocalJob

if TYPE_CHECKING:
    from ._errands import Errands

logger = logging.getLogger("errands")

#: How often a worker purges jobs past the retention time.
PURGE_EVERY = 60.0

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
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._due: list[float] = []  # when retries of this worker's jobs fall due
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._context = contextvars.Context()
        # Whether the store may have claimable jobs: set when jobs are released or
        # finish here, and at every poll (other processes may add to a shared store).
        self._store_dirty = True
        #: Claim from a shared store only once this many slots are free (except on
        #: polls and new work): one transaction then claims several jobs.
        self.claim_batch = max(1, concurrency // 4) if errands.store.durable else 1
        #: Slots held for a claim in flight (a durable store claims in the group commit).
        self._claiming = 0

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

    def offer(self, *, stored: bool = False) -> None:
        """New work was handed over: start it now if we are on the worker's loop."""
        if stored:
            self._store_dirty = True
        if self._stopping or self._loop is None:
            return
        if self.on_own_loop():
            self._fill()
        else:
            self.wake()

    def start(self) -> None:
        """Start on the running event loop; returns at once."""
        loop = self._loop = asyncio.get_running_loop()
        # Jobs run in a context of their own, not that of whichever request
        # happened to hand work over (its request ids, spans, sessions).
        self._context = contextvars.copy_context()
        self._wake = asyncio.Event()
        _RUNNING.setdefault(loop, []).append(self.errands)
        self._main = loop.create_task(self._run(), context=self._context.copy())

    async def _run(self) -> None:
        loop, wake = self._loop, self._wake
        assert loop is not None and wake is not None
        next_purge = 0.0
        while not self._stopping:
            wake.clear()
            self._store_dirty = True
            self._fill()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_EVERY
                loop.run_in_executor(None, self._purge)
            timer = loop.call_later(self._sleep_for(), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    async def stop(self, drain_timeout: float) -> bool:
        """Stop claiming; wait up to ``drain_timeout`` for running jobs. True if drained."""
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
                    "errands: %d job(s) did not stop within %g s of being cancelled; "
                    "leaving them behind",
                    len(stuck),
                    timeout,
                )
        self.unregister()

    def unregister(self) -> None:
        if self._loop is not None and self.errands in _RUNNING.get(self._loop, ()):
            _RUNNING[self._loop].remove(self.errands)
            if not _RUNNING[self._loop]:
                del _RUNNING[self._loop]
        self._loop = None

    def _purge(self) -> None:
        """Delete jobs finished longer than ``retention`` ago (in a thread: may be slow)."""
        before = utcnow() - timedelta(seconds=self.errands.retention)
        try:
            purged = self.errands.store.purge(before)
        except Exception:
            logger.exception("errands: purging finished jobs failed; trying again later")
            return
        if purged:
            logger.info("errands: purged %d job(s) finished before %s", purged, before)

    def _sleep_for(self) -> float:
        now = time.monotonic()
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
        if self._due:
            return min(self.poll_interval, self._due[0] - now)
        return self.poll_interval

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro, context=self._context.copy())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("errands: worker task crashed", exc_info=exc)
        if not self._stopping:
            # A slot is free, and a finished job may unblock the next. A shared store
            # is claimed from in batches: the poll picks up any single free slot.
            self._fill(min_free=self.claim_batch)

    def _free(self) -> int:
        return self.concurrency - len(self._tasks) - self._claiming

    def _fill(self, min_free: int = 1) -> None:
        if self._stopping or self._free() < min_free:
            return
        # Half the free slots go to the store first, so a steady stream of plain
        # callables cannot starve registered jobs (nor the reverse).
        self._claim((self._free() + 1) // 2)
        lanes = self.errands.lanes
        while self._free() > 0 and lanes:
            self._start(self._run_lane(lanes.popleft()))
        self._claim(self._free())

    def _claim(self, free: int) -> None:
        store = self.errands.store
        if free <= 0 or not self._store_dirty or not store.claims or self._claiming:
            return
        self._store_dirty = False
        claim = functools.partial(store.claim, self.id, free, self.errands.lease)
        if not store.durable:
            self._claimed(free, claim, later=False)
            return
        # A durable store's claim is a write: it joins the group commit, off the loop,
        # rather than wait here for the write lock.
        self._claiming = free
        self.errands.group().submit(claim).add_done_callback(
            lambda done: self._claimed(free, done.result, later=True)
        )

    def _claimed(self, free: int, result: Callable[[], list[JobRecord]], *, later: bool) -> None:
        self._claiming = 0
        try:
            claimed = result()
        except asyncio.CancelledError:
            return
        except Exception:
            logger.exception("errands: claiming jobs failed; trying again")
            return
        if self._stopping:
            # Stopped while the claim was being written: give the jobs back untouched.
            for job in claimed:
                try:
                    self.errands.store.requeue(job)
                except Exception:
                    logger.exception(
                        "errands: giving back job %s failed; it runs when its lease ends", job.id
                    )
            return
        if len(claimed) == free:
            self._store_dirty = True  # there may be more
        for job in claimed:
            self._start(self._run_stored(job))
        if later:
            self._fill()  # slots the claim held and did not use; work offered meanwhile

    async def _run_lane(self, lane: LocalJob | list[LocalJob]) -> None:
        if isinstance(lane, LocalJob):
            lane = [lane]
        finished = self.errands.job_finished
        run_local = self.errands.runner.run_local
        for index, job in enumerate(lane):
            if self._stopping:
                self.errands.lanes.appendleft(lane[index:])  # draining: start nothing new
                return
            try:
                await run_local(job, finished)
            except asyncio.CancelledError:
                # Put back what had not started, for the next worker of this process.
                if index + 1 < len(lane):
                    self.errands.lanes.appendleft(lane[index + 1 :])
                raise

    async def _run_stored(self, job: JobRecord) -> None:
        retry_at = await self.errands.runner.run_stored(self.errands, job)
        self._store_dirty = True  # the next job of its request may be claimable now
        if retry_at is not None:
            # Wake when the retry falls due, rather than at the next poll.
            delay = (retry_at - utcnow()).total_seconds()
            heapq.heappush(self._due, time.monotonic() + max(0.0, delay))
            if self._wake is not None:
                self._wake.set()
