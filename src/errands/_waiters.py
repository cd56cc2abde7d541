"""Waking whoever awaits a job, in whichever thread and event loop they wait."""

from __future__ import annotations

import asyncio
import threading


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Waiters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, list[asyncio.Future[None]]] = {}

    def subscribe(self, id: str) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._futures.setdefault(id, []).append(future)
        return future

    def unsubscribe(self, id: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            futures = self._futures.get(id)
            if futures is not None:
                if future in futures:
                    futures.remove(future)
                if not futures:
                    del self._futures[id]

    def notify(self, id: str) -> None:
        if not self._futures:  # the common case: nobody waits; skip the lock
            return
        with self._lock:
            futures = self._futures.pop(id, ())
        for future in futures:
            loop = future.get_loop()
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                _resolve(future)
            else:
                loop.call_soon_threadsafe(_resolve, future)


#: One table for the process: a job finishes once, wherever it is awaited.
WAITERS = Waiters()
