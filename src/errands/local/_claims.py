"""Claims: how this process's worker takes jobs from the local backend's store.

It claims only the tasks registered here (so during a rolling deploy an old worker
leaves a new task's jobs to a worker that knows them), and of each kind no more
than can start at once: ``def`` jobs up to the free threads, ``process=True`` jobs
up to the free process slots, ``async def`` jobs up to the free slots. A job never
waits in this process holding a lease it cannot use, and its timeout never counts
a wait for a thread.

A durable store's claim is a write: it joins the group commit, off the event
loop, holding its slots meanwhile; except in a worker whose loop runs nothing else
(``errands worker``), which claims on its loop while idle if the store can without
waiting (``ClaimsNow``: an idle worker's job then starts with no thread hop).

A store error backs off (doubling, to a cap) and is logged once a step; an error
that will not heal (a corrupt or unwritable file) stops the claims and tells the
worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._limits import Limit
from .._record import JobRecord
from .._task import Kind
from .._tuning import (
    MAX_STORE_BACKOFF,
    MIN_STORE_BACKOFF,
    POLL_LOCAL,
    POLL_SHARED,
)
from ..exceptions import StoreCorrupt, StoreError, StoreUnwritable
from ._store import Announcing, ClaimsNow, Counting, Want

if TYPE_CHECKING:
    from .._worker import Worker
    from ._backend import LocalBackend

logger = logging.getLogger("errands")


class Backoff:
    """Pauses after failures that may pass: doubling from a minimum to a cap, logged
    once a step (and once a minute at the cap), with a line when it works again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.until = 0.0
        self._delay = 0.0
        self._logged = (0.0, 0.0)  # (delay, when) of the last line

    def failed(self, exc: Exception) -> float:
        """Note a failure; how long to pause."""
        self._delay = next_delay(self._delay)
        self.note(exc, self._delay)
        self.until = time.monotonic() + self._delay
        return self._delay

    def note(self, exc: Exception, delay: float) -> None:
        """Log a failure that pauses ``delay`` seconds, if it is a new step (with its
        traceback if it is not the store's own error: that is a bug to see)."""
        now = time.monotonic()
        logged_delay, logged_at = self._logged
        if delay > logged_delay or now - logged_at >= 60:
            self._logged = (delay, now)
            logger.warning(
                "%s failed (%s); trying again in %g s",
                self.what,
                exc,
                delay,
                exc_info=None if isinstance(exc, StoreError) else exc,
            )

    def succeeded(self) -> None:
        if self._logged[0]:
            logger.info("%s works again", self.what)
            self._logged = (0.0, 0.0)
        self._delay = 0.0
        self.until = 0.0

    @property
    def paused(self) -> bool:
        return self.until > time.monotonic()


def _raise(exc: Exception) -> list[JobRecord]:
    raise exc


def next_delay(delay: float) -> float:
    """The pause after one more failure: doubling from a minimum to a cap."""
    return min(MAX_STORE_BACKOFF, max(MIN_STORE_BACKOFF, delay * 2))


#: The kinds of task, in the order they take turns asking first.
_KINDS: tuple[Kind, ...] = ("thread", "process", "async")


class Claims:
    def __init__(self, backend: LocalBackend, worker: Worker, *, listening: bool = False) -> None:
        self._backend = backend
        self._worker = self.worker = worker
        durable = backend.durable
        #: A shared store gets jobs from other processes too: look for them often,
        #: unless the store says when they come.
        self._poll = POLL_SHARED if durable else POLL_LOCAL
        if listening and isinstance(backend.store, Announcing):
            self._poll = backend.store.poll_announced
        self.poll_interval = self._poll
        self._limits: dict[str, Limit] = {}
        self._dirty = True  # the store may have claimable jobs
        self._claiming = 0  # slots held by a claim in flight
        # With ``batch``, claim only once a quarter of a kind's capacity is free: one
        # transaction then claims several jobs (the memory store claims at once).
        self._quarter = 4 if durable else 0
        self._backoff = Backoff("claiming jobs")
        self._names: dict[Kind, tuple[str, ...]] = {}
        self._kinds: tuple[Kind, ...] = ()  # those with names, in _KINDS's order
        self._registered = -1
        # Jobs claimed and not yet handed to their pool: not counted in its free().
        self._starting: dict[Kind, int] = {"async": 0, "thread": 0, "process": 0}
        self._turn = 0  # which kind asks first
        self.failure: StoreError | None = None  # set when the store will not heal
        # A store of this process alone that counts what it makes claimable: a job's
        # end asks it again only if the count moved (or the task has limits).
        store = backend.store
        self._counting = store if isinstance(store, Counting) and not durable else None
        self._seen = -1  # its count when last asked
        # A store that claims without waiting, for a worker whose loop runs
        # nothing else: it claims there while idle.
        self._claims_now = store if worker.owns_loop and isinstance(store, ClaimsNow) else None

    def wanted(self) -> None:
        self._dirty = True

    def fill(self, free: int, *, batch: bool) -> None:
        if free <= 0 or not self._dirty or self._claiming or self.failure is not None:
            return
        if not self._backend.tasks:
            return  # nothing this worker could run (plain callables only, so far)
        if self._backoff.paused:
            return
        wants = self._wants(free, batch)
        if not wants:
            return
        self._dirty = False
        total = min(free, sum(most for _, most in wants))
        backend = self._backend
        claim = functools.partial(
            backend.store.claim, backend.process_id, backend.lease, wants, total, self._limits
        )
        if not backend.durable:
            if self._counting is not None:
                self._seen = self._counting.changes
            self._claimed(total, claim)
            return
        if self._claims_now is not None and self._worker.idle:
            # Nothing else on this loop to hold up: claim here, unless another writer
            # holds the store (then through the commit thread, which waits for it).
            try:
                now = self._claims_now.claim_now(
                    backend.process_id, backend.lease, wants, total, self._limits
                )
            except Exception as exc:
                self._claimed(total, functools.partial(_raise, exc))
                return
            if now is not None:
                self._claimed(total, lambda: now)
                return
        self._claiming = total
        self._worker.reserve(total)
        backend.group().submit(claim).add_done_callback(
            lambda done: self._claimed(total, done.result, later=True)
        )

    def _wants(self, free: int, batch: bool) -> list[Want]:
        """What to ask the store for: each kind of task up to what its pool can start
        now (the claim takes ``free`` at most in all, of what is due). The kinds take
        turns going first, so that none starves the others."""
        names = self._by_kind()
        kinds = self._kinds  # only the kinds registered here (usually one) take turns
        if len(kinds) > 1:
            turn = self._turn = (self._turn + 1) % len(kinds)
            kinds = kinds[turn:] + kinds[:turn]
        wants: list[Want] = []
        for kind in kinds:
            if kind == "async":
                capacity, size = free, self._worker.concurrency
            elif kind == "thread":
                threads = self._backend.calls.threads
                capacity, size = threads.free() - self._starting["thread"], threads.size
            else:
                processes = self._backend.calls.processes
                capacity = processes.free() - self._starting["process"]
                size = processes.processes
            most = min(free, capacity)
            if most <= 0:
                continue
            if batch and self._quarter and most < max(1, size // self._quarter):
                continue
            wants.append((names[kind], most))
        return wants

    def _by_kind(self) -> dict[Kind, tuple[str, ...]]:
        tasks = self._backend.tasks
        if len(tasks) != self._registered:  # tasks registered since: group them again
            grouped: dict[Kind, list[str]] = {}
            for task in tasks.values():
                grouped.setdefault(task.kind, []).append(task.name)
            self._names = {kind: tuple(sorted(names)) for kind, names in grouped.items()}
            self._kinds = tuple(kind for kind in _KINDS if kind in self._names)
            self._limits = {t.name: t.limit for t in tasks.values() if t.limit is not None}
            # A token comes every 1/rate s: look that often (the memory store's poll is
            # long, and its claims would otherwise wait for it).
            rates = [limit.rate for limit in self._limits.values() if limit.rate]
            self.poll_interval = min([self._poll, *(max(0.005, 1 / r) for r in rates)])
            self._registered = len(tasks)
        return self._names

    def _claimed(
        self, total: int, result: Callable[[], list[JobRecord]], *, later: bool = False
    ) -> None:
        worker = self._worker
        if later:
            self._claiming = 0
            worker.unreserve(total)
        try:
            claimed = result()
        except asyncio.CancelledError:
            return
        except (StoreCorrupt, StoreUnwritable) as exc:
            self.failure = exc
            logger.error("%s; this process's worker stops taking jobs", exc)
            worker.failed(exc)
            return
        except Exception as exc:  # a store error that may pass, or a bug: back off either way
            worker.wake_at(time.monotonic() + self._backoff.failed(exc))
            self._dirty = True
            return
        self._backoff.succeeded()
        if lost := self._backend.store.lost:
            self._backend.count_lost(lost)
        if worker.stopping:
            for job in claimed:  # stopped while the claim was written: back, untouched
                self._backend.give_back(job)
            return
        if len(claimed) == total:
            self._dirty = True  # there may be more
        tasks = self._backend.tasks
        for job in claimed:
            kind = tasks[job.name].kind
            self._starting[kind] += 1
            worker.start(self._run(job, kind))
        if later:
            worker.fill()  # slots the claim held and did not use; work offered meanwhile

    async def _run(self, job: JobRecord, kind: Kind) -> None:
        # Handed to its pool within this first step of the task (run() does not
        # suspend before it): from here the pool's free() counts it.
        self._starting[kind] -= 1
        retry_at = await self._backend.runner.run(job)
        counting = self._counting
        if counting is None or counting.changes != self._seen or job.name in self._limits:
            self._dirty = True  # the next job of its request may be claimable now
        if retry_at is not None:
            self._worker.wake_at(retry_at)
