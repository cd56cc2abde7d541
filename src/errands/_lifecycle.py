"""An Errands instance's worker running in this process: its lifespan, and the signal
handling of ``run_worker`` (what ``errands worker`` runs)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ._worker import Worker
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._errands import Errands

logger = logging.getLogger("errands")

#: How often an idle worker looks in the store: a shared store gets jobs from other
#: processes; the memory store only from this one, which wakes the worker itself.
POLL_SHARED = 0.01  # idle polls of the SQLite store are one indexed read
POLL_LOCAL = 1.0


@asynccontextmanager
async def serving(errands: Errands, drain_timeout: float | None = None) -> AsyncIterator[None]:
    if errands._worker is not None:
        raise ConfigurationError(
            "this Errands instance's worker is already running; enter its lifespan once"
        )
    # A shared store gets jobs from other processes too: look for them often.
    poll = POLL_SHARED if errands.store.durable and errands.store.claims else POLL_LOCAL
    worker = errands._worker = Worker(errands, concurrency=errands.concurrency, poll_interval=poll)
    worker.start()
    try:
        yield
    finally:
        try:
            drain = errands.drain_timeout if drain_timeout is None else drain_timeout
            with anyio.CancelScope(shield=True):
                drained = await worker.stop(drain)
                if not drained:
                    logger.warning(
                        "errands: jobs still running after drain_timeout=%g s were "
                        "cancelled; registered ones go back to the queue",
                        drain,
                    )
                await worker.close()
                leases = errands._leases.pop(asyncio.get_running_loop(), None)
                if leases is not None:
                    leases.close()
                group = errands._groups.pop(asyncio.get_running_loop(), None)
                if group is not None:
                    await group.aclose()
        finally:
            # Even if this task is cancelled natively while draining.
            worker.unregister()
            errands._worker = None
            errands.runner.close()
        left = errands._backlog.size
        if left and not errands.store.durable:
            logger.warning("errands: %d in-memory jobs had not run when the worker stopped", left)


async def run_until_signalled(errands: Errands) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: do not wait for the drain
            logger.warning("errands: second signal; exiting without draining")
            logging.shutdown()
            os._exit(1)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        async with serving(errands):
            logger.info(
                "errands: worker running on %s with %d task(s) registered",
                errands.url,
                len(errands._tasks),
            )
            await stop.wait()
            logger.info("errands: stopping; draining for up to %g s", errands.drain_timeout)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


@asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    yield
