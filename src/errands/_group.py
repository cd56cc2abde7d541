"""Group commit: one transaction for the jobs of every request that arrives while the
previous transaction is being written.

A durable store's commit is a disk write; taking one per request serialises the
server on it. Here requests hand their jobs over and wait; a single flusher writes
whatever has gathered in one transaction, in a thread (so the event loop serves
other requests meanwhile), and wakes them all. Under load the batches grow by
themselves; alone, a request pays one transaction as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio

from ._job import JobRecord
from ._store import Store


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[tuple[Sequence[JobRecord], asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, records: Sequence[JobRecord]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((records, done))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # The request went away while its jobs were being written: once written,
            # take them back, so that a failed request leaves nothing to run.
            ids = [r.id for r in records]
            done.add_done_callback(
                lambda f: (
                    None
                    if f.cancelled() or f.exception()
                    else self._store.cancel(
                        ids, "dropped: the request was cancelled while its jobs were stored"
                    )
                )
            )
            raise

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [record for records, _ in batch for record in records]
                try:
                    await anyio.to_thread.run_sync(self._store.enqueue, rows)
                except Exception:
                    # Write each request's jobs alone: one bad request must not fail
                    # the others that shared its transaction.
                    for records, done in batch:
                        try:
                            await anyio.to_thread.run_sync(self._store.enqueue, records)
                        except Exception as exc:
                            if not done.done():
                                done.set_exception(exc)
                        else:
                            if not done.done():
                                done.set_result(None)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flushing = False
