"""Group commit: the writes of one event loop share transactions, off the loop.

A durable store's write is a disk transaction; taking one per request (to store its
jobs, to release them, to record each result) on the event loop serialises the
server on the disk. Here writers hand their operation over and (if they care) wait;
a single flusher runs whatever has gathered in one transaction, in a thread, so the
loop serves requests meanwhile, and wakes them all. Under load the batches grow by
themselves; alone, a write pays one transaction as before. Each operation keeps its
own outcome: the store runs it in a savepoint, so one failing write does not undo
the others of its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ._store import Store

logger = logging.getLogger("errands")

T = TypeVar("T")

_Outcome = tuple[bool, Any]


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self._store = store
        # One thread of its own: one connection, and never queued behind the thread
        # pool that serves sync endpoints.
        self._thread = ThreadPoolExecutor(1, "errands-commit")
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` (a store write) in the next shared transaction; its result."""
        done = self.submit(operation)
        result: T = await asyncio.shield(done)
        return result

    def submit(self, operation: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``operation`` without waiting; the future says how it went."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((operation, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._run, [op for op, _ in batch]
                )
            except Exception as exc:  # the shared COMMIT itself failed: nothing was kept
                outcomes = [(False, exc)] * len(batch)
            for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    async def aclose(self) -> None:
        """Finish the writes already handed over (at shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        self._thread.shutdown(wait=False)

    def _run(self, operations: list[Callable[[], Any]]) -> list[_Outcome]:
        batch = getattr(self._store, "batch", None)
        outcomes: list[_Outcome] = []
        with batch() if batch is not None else contextlib.nullcontext():
            for operation in operations:
                try:
                    outcomes.append((True, operation()))
                except Exception as exc:
                    outcomes.append((False, exc))
        return outcomes
