"""Wake-ups through LISTEN/NOTIFY: a worker hears of jobs other processes add.

A write that makes jobs claimable now (adding jobs nobody holds, releasing a request's
jobs, giving one back, ``errands.retry``) sends a notification on the schema's channel
with its transaction (PostgreSQL delivers it at commit, and folds the same one sent
twice in a transaction). A thread of the worker's process listens on a connection of
its own (not the pool's) and wakes the worker, which claims at once instead of at its
next poll. The worker still polls, less often: jobs that fall due later (a delay, a
retry's backoff) and leases that run out are announced by nobody. A connection that
breaks (a restart, a failover) is opened again, after a pause that doubles to a cap,
logged as the worker's other backoffs are (once a step, and a line when it works
again); the worker is woken once it is back, for what was added meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from ..exceptions import StoreError
from ..local._claims import Backoff
from ._connections import CONNECT_TIMEOUT

logger = logging.getLogger("errands")

#: How often the listening thread looks whether it should stop (seconds): the longest
#: its connection outlives ``close``.
STOP_CHECK = 0.5


def channel(schema: str) -> str:
    """The channel of the store in ``schema`` (a schema's name is a safe identifier)."""
    return f"errands_{schema}"


class Listener:
    """Calls ``wake`` (in its own thread) whenever the channel is notified."""

    def __init__(self, conninfo: str, schema: str, wake: Callable[[], None], where: str) -> None:
        self._conninfo = conninfo
        self._channel = channel(schema)
        self._wake = wake
        self._stop = threading.Event()
        # The pause before opening the connection again: doubles while it fails.
        self._backoff = Backoff(f"listening for new jobs in the PostgreSQL store {where}")
        self._thread = threading.Thread(target=self._run, name="errands-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return  # closed meanwhile: nobody waits for it
                said = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                # (The worker polls meanwhile.)
                self._stop.wait(self._backoff.failed(StoreError(said)))

    def _listen(self) -> None:
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as db:
            db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self._backoff.succeeded()
            if self._stop.is_set():
                return
            self._tell()  # what was added while nobody listened
            while not self._stop.is_set():
                # One wake-up for all the notifications read at once (``stop_after``
                # ends the generator after the read that brought the first): a busy
                # worker, slow to listen, is not woken once a job.
                if list(db.notifies(timeout=STOP_CHECK, stop_after=1)):
                    if self._stop.is_set():
                        return
                    self._tell()

    def _tell(self) -> None:
        try:
            self._wake()
        except Exception:  # (a worker's loop closing meanwhile): its poll will do
            logger.debug("waking the worker for new jobs failed", exc_info=True)

    def close(self, *, wait: bool = False) -> None:
        """Stop listening. Returns at once: the thread ends by itself within
        ``STOP_CHECK`` (closing its connection) and wakes nobody meanwhile (waiting for
        it cost every stop of a worker half a second); with ``wait``, once it has (the
        store closing: its connections go with it)."""
        self._stop.set()
        if wait:
            self._thread.join(timeout=STOP_CHECK + CONNECT_TIMEOUT)
