"""Group commit: the writes of one event loop share transactions, off the loop.

(Celery mode uses the same machinery without a transaction: requests' publishes
gather while one batch is sent, one hand-over to a thread for many requests.)

A durable store's write is a disk transaction; taking one per request (to store its
jobs, to release them, to record each result) on the event loop serialises the
server on the disk. Here writers hand their operation over and (if they care) wait;
a single flusher runs whatever has gathered in one transaction, in a thread, so the
loop serves requests meanwhile, and wakes them all. Under load the batches grow by
themselves; alone, a write pays one transaction as before. Each operation keeps its
own outcome: the store runs it in a savepoint, so one failing write does not undo
the others of its batch.

Bulk writes (storing a request's jobs, releasing them) are merged: all those of one
method in a batch go to the store as one call, in one savepoint, which is what makes
a batch cheap per job. Only writes that commute with the rest of the batch may be
bulk: these name jobs stored by an earlier batch, or new ones. Should the merged call
fail, each write is tried again alone, so that only the bad one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, TypeVar

logger = logging.getLogger("errands")

T = TypeVar("T")

_Outcome = tuple[bool, Any]


@dataclass(slots=True)
class _Write:
    """One write: ``call()``, or ``bulk(items)`` that may be merged with others."""

    call: Callable[[], Any] | None
    bulk: Callable[[Sequence[Any]], Sequence[Any] | None] | None
    items: Sequence[Any]


class GroupCommit:
    """``batch()`` opens the transaction that a batch's writes share."""

    def __init__(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        self._batch = batch
        # One thread of its own: one connection, and never queued behind the thread
        # pool that serves sync endpoints. Handed a batch through a queue, it settles
        # the batch's future on the loop itself: an executor's futures, chained to
        # the loop's, cost more than the rest of the hand-over (~100k instructions).
        self._queue: _Queue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending: list[tuple[_Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` (a store write) in the next shared transaction; its result."""
        done = self.submit(operation)
        result: T = await asyncio.shield(done)
        return result

    def submit(self, operation: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``operation`` without waiting; the future says how it went."""
        return self._submit(_Write(operation, None, ()))

    def submit_bulk(
        self, method: Callable[[Sequence[T]], Sequence[T] | None], items: Sequence[T]
    ) -> asyncio.Future[list[T]]:
        """Queue ``method(items)``, to be merged with the batch's other calls of
        ``method`` (see the module's docstring for which writes may be). ``method``
        may return some of the items it was given (those it left alone, say): each
        write's future gets those of its own items, as a list."""
        return self._submit(_Write(None, method, items))

    def _submit(self, write: _Write) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((write, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        finally:
            # A done task keeps its loop: this object (in a table keyed weakly by the
            # loop) must not, or neither would ever go.
            self._flusher = None

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._hand_over([write for write, _ in batch])
            except Exception as exc:  # the shared COMMIT itself failed: nothing was kept
                outcomes = [(False, exc)] * len(batch)
            for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    def _hand_over(self, writes: list[_Write]) -> asyncio.Future[list[_Outcome]]:
        """Run ``writes`` in the thread; the future of their outcomes."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[_Outcome]] = loop.create_future()
        if self._thread is None:
            # A daemon, as errands' other threads: a graceful shutdown finishes its
            # writes (aclose), and it ends once this object is dropped with its loop.
            self._thread = threading.Thread(
                target=_serve, args=(self._queue,), name="errands-commit", daemon=True
            )
            self._thread.start()
            weakref.finalize(self, self._queue.put, None)
        self._queue.put((self._run, writes, loop, done))
        return done

    async def aclose(self) -> None:
        """Finish the writes already handed over (at shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._thread is not None:
            self._queue.put(None)  # the thread ends; another starts should one be needed
            self._queue = SimpleQueue()
            self._thread = None

    def _run(self, writes: list[_Write]) -> list[_Outcome]:
        if len(writes) == 1:
            # Alone: the write is its own transaction, so its outcome is the store's
            # very own (and a store may commit a write of one statement without a
            # BEGIN: one round trip to a server, not three).
            return [_alone(writes[0])]
        outcomes: list[_Outcome | None] = [None] * len(writes)
        bulks: dict[Callable[[Sequence[Any]], Sequence[Any] | None], list[int]] = {}
        for index, write in enumerate(writes):
            if write.bulk is not None:
                bulks.setdefault(write.bulk, []).append(index)
        with self._batch():
            # Bulk writes first: jobs released here can be claimed by this very batch.
            for method, indexes in bulks.items():
                if len(indexes) > 1:
                    merged = [item for i in indexes for item in writes[i].items]
                    ok, returned = _outcome(method, merged)
                    if ok:
                        for i in indexes:
                            outcomes[i] = (True, _own(returned, writes[i].items))
                        continue
                for i in indexes:  # alone, or again one by one after the merged call failed
                    outcomes[i] = _alone(writes[i])
            for index, write in enumerate(writes):
                if write.call is not None:
                    outcomes[index] = _alone(write)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]


#: What the thread is handed: a batch to run (the run, its writes, and the loop and
#: future its outcomes go to), or None to end.
_Job = tuple[
    Callable[[list[_Write]], list[_Outcome]],
    list[_Write],
    asyncio.AbstractEventLoop,
    "asyncio.Future[list[_Outcome]]",
]
_Queue = SimpleQueue[_Job | None]


def _serve(queue: _Queue) -> None:
    """A group commit's thread: runs what it is handed until told to end."""
    while (job := queue.get()) is not None:
        _run_job(job)
        del job  # holds the group commit: it must be free to go while this waits


def _run_job(job: _Job) -> None:
    run, writes, loop, done = job
    try:
        outcome: tuple[bool, Any] = (True, run(writes))
    except BaseException as exc:  # (as an executor's future would keep it)
        outcome = (False, exc)
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
        loop.call_soon_threadsafe(_settle, done, outcome)


def _settle(done: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if done.done():
        return  # cancelled (its loop is shutting down)
    ok, value = outcome
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)


def _alone(write: _Write) -> _Outcome:
    """One write's outcome, run by itself (a bulk one gets back its own items)."""
    if write.bulk is None:
        assert write.call is not None
        return _outcome(write.call)
    ok, returned = _outcome(write.bulk, write.items)
    return (ok, _own(returned, write.items) if ok else returned)


def _own(returned: Sequence[Any] | None, items: Sequence[Any]) -> list[Any]:
    """Of the items a bulk call returned, those of one write (by identity)."""
    if not returned:
        return []
    mine = {id(item) for item in items}
    return [item for item in returned if id(item) in mine]


def _outcome(call: Callable[..., Any], *args: Any) -> _Outcome:
    try:
        return (True, call(*args))
    except Exception as exc:
        return (False, exc)
