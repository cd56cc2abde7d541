"""The bound on jobs held in memory: what cannot be lost to a full disk can be lost
to a full heap, so in-memory jobs (plain callables, and every job of the memory
store) are counted from the moment they are accepted until they finish."""

from __future__ import annotations

import asyncio
import threading
import time

from ._tuning import BACKLOG_POLL
from .exceptions import BacklogFull


class Backlog:
    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._size = 0
        self._changed = threading.Condition(threading.Lock())
        self._blocked = 0  # threads waiting in reserve_blocking (told when room frees)

    @property
    def size(self) -> int:
        return self._size

    def _try(self, n: int) -> bool:
        if self._size + n <= self.limit:
            self._size += n
            return True
        return False

    def _full(self, n: int) -> BacklogFull:
        return BacklogFull(
            f"the errands backlog is full ({self._size} of max_backlog={self.limit} jobs "
            f"waiting or running in memory; {n} more did not fit within "
            f"backlog_timeout={self.timeout:g} s). Nothing was queued. Let the workers "
            f"catch up, raise max_backlog, or add threads/concurrency."
        )

    def reserve_nowait(self, n: int) -> None:
        with self._changed:
            if not self._try(n):
                raise self._full(n)

    def reserve_blocking(self, n: int) -> None:
        """Wait up to ``timeout`` for room, from a thread that may block."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            # Blocking here would also block the loop whose worker frees the room.
            return self.reserve_nowait(n)
        with self._changed:
            self._blocked += 1
            try:
                if not self._changed.wait_for(lambda: self._try(n), self.timeout):
                    raise self._full(n)
            finally:
                self._blocked -= 1

    def try_reserve(self, n: int) -> bool:
        """Room for ``n`` now, if there is (``reserve`` waits for it)."""
        with self._changed:
            return self._try(n)

    async def reserve(self, n: int) -> None:
        """Wait up to ``timeout`` for room, without blocking the event loop."""
        with self._changed:
            if self._try(n):
                return
        if n > self.limit:
            raise self._full(n)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(BACKLOG_POLL)
            with self._changed:
                if self._try(n):
                    return
        raise self._full(n)

    def release(self, n: int = 1) -> None:
        with self._changed:
            self._size = max(0, self._size - n)
            if self._blocked:
                self._changed.notify_all()
