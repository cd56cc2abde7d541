"""Cancelling a job that runs: how an attempt learns that ``errands.cancel`` was
called for its job, in any mode.

Each attempt runs with a ``Stop`` of its own in a context variable. The worker that
runs it sets it when it learns of the cancel (it asks its store, or Celery's result
backend, about the jobs it runs about once a second). An ``async def`` attempt is
cancelled there and then; a ``process=True`` attempt's process is killed; a ``def``
attempt cannot be interrupted, and may look: ``errands.cancel_requested()``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

#: The error of a job cancelled by ``errands.cancel``: before it ran, or while it ran.
CANCELLED_QUEUED = "Cancelled: errands.cancel() was called before it ran"
CANCELLED_RUNNING = "Cancelled: errands.cancel() was called while it ran"


class Stop:
    """Whether the attempt's job was asked to stop. Set from the worker's thread,
    read from the attempt's (a plain attribute: one write, reads after it see it)."""

    __slots__ = ("interrupt", "requested")

    def __init__(self) -> None:
        self.requested = False
        #: How to interrupt the attempt (cancel its asyncio task), if it can be.
        self.interrupt: Callable[[], object] | None = None

    def request(self) -> bool:
        """The job was asked to stop: say so, and interrupt the attempt if it can be.
        False if it had been asked already."""
        if self.requested:
            return False
        self.requested = True
        if self.interrupt is not None:
            self.interrupt()
        return True


_CURRENT: ContextVar[Stop | None] = ContextVar("errands_stop", default=None)


def running(stop: Stop | None) -> Token[Stop | None]:
    """The attempt of this context (and of the threads it starts in a copy of it);
    what puts the one before back (``_CURRENT.reset``), for a thread that runs
    attempt after attempt."""
    return _CURRENT.set(stop)


def done(token: Token[Stop | None]) -> None:
    _CURRENT.reset(token)


def cancel_requested() -> bool:
    """Whether ``errands.cancel`` was called for the job whose attempt runs here.

    A ``def`` task cannot be interrupted; a long one may look now and then and
    return early: its job ends ``cancelled`` either way, its result discarded.
    False outside an attempt.
    """
    stop = _CURRENT.get()
    return stop is not None and stop.requested
