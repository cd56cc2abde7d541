"""The SQLite store's wake-ups, as the store uses them: a write that makes jobs
claimable wakes the workers of every process once it commits (``_announce``), and a
worker listens on its event loop (``listen``); the sockets themselves are ``_wake``'s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .._tuning import POLL_ANNOUNCED_SQLITE
from ..local._listeners import Listeners
from ._reads import Reads
from ._wake import Listener, Waker, running_loop, wake_folder

logger = logging.getLogger("errands")


class WakeUps(Reads):
    def __init__(self, path: str | Path, busy_timeout: float) -> None:
        super().__init__(path, busy_timeout)
        self._waker = Waker(wake_folder(Path(self.location)))
        self._listeners = Listeners()

    #: How often a worker that is told of new jobs still polls (seconds): for jobs
    #: falling due (delays, retries) and lost wake-ups.
    poll_announced = POLL_ANNOUNCED_SQLITE

    def _announce(self) -> None:
        """Wake the workers of other processes once this thread's writes commit."""
        self.after_commit(self._waker.announce, once=True)

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        try:
            listener = Listener(self._waker.folder, wake, loop=running_loop())
        except OSError as exc:
            logger.info(
                "the worker polls the SQLite store %s (%s): it cannot be woken through "
                "a socket in %s",
                self.location,
                exc,
                self._waker.folder,
            )
            return None
        return self._listeners.keep(listener)

    def close(self) -> None:
        self._listeners.close()
        super().close()
