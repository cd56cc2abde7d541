"""An Errands instance's worker running in this process: the lifespan that starts
and drains it, the signal handling of ``run_worker`` (what ``errands worker``
runs), and which instance's worker runs on which event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import anyio

from ._schedule import Scheduler
from ._tracing import fastapi_telemetry
from ._tuning import JOIN_POLL_LOCAL, JOIN_POLL_SHARED
from ._worker import Worker
from .exceptions import ConfigurationError, WaitTimeout

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("errands")

#: The instances serving on each event loop (their lifespan, or their worker, runs
#: there): where a request's plain callables go when nothing else names an instance.
_RUNNING: dict[asyncio.AbstractEventLoop, list[Core]] = {}


def running_core() -> Core | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    cores = _RUNNING.get(loop)
    return cores[0] if cores else None


@contextmanager
def on_this_loop(core: Core) -> Iterator[None]:
    """``core`` serves on the running loop while inside."""
    loop = asyncio.get_running_loop()
    _RUNNING.setdefault(loop, []).append(core)
    try:
        yield
    finally:
        cores = _RUNNING.get(loop, [])
        if core in cores:
            cores.remove(core)
        if not cores:
            _RUNNING.pop(loop, None)


@asynccontextmanager
async def scheduling(core: Core) -> AsyncIterator[None]:
    """Keep ``core``'s schedules on this loop while inside."""
    if not core.schedules:
        yield
        return
    task = asyncio.get_running_loop().create_task(Scheduler(core).run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def serving(
    core: Core,
    drain_timeout: float | None = None,
    *,
    keep_lanes: bool = False,
    owns_loop: bool = False,
) -> AsyncIterator[Worker]:
    """Run ``core``'s worker on this loop while inside. When it stops, the plain jobs
    that never started are cancelled, unless ``keep_lanes`` (for a later worker of this
    process: ``join()`` runs one for a while). Schedules are kept by ``scheduling``,
    not here: ``join()`` must not add ticks while it waits for the jobs to end.
    ``owns_loop``: the loop runs nothing but this worker (``errands worker``)."""
    if core.worker is not None:
        raise ConfigurationError(
            "this Errands instance's worker is already running; enter its lifespan once"
        )
    backend = core.backend
    worker = Worker(
        concurrency=core.options.concurrency,
        plain=core.plain,
        threads=core.threads,
        owns_loop=owns_loop,
    )
    worker.source = backend.source(worker)
    core.worker = worker
    with on_this_loop(core):
        try:
            await backend.started(worker)
            worker.start_loop()
            yield worker
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await _stop(core, worker, drain_timeout, keep_lanes)
            finally:
                # Even if this task is cancelled natively while draining.
                core.worker = None
                core.threads.close()
    left = core.backlog.size
    if left and not backend.durable:
        logger.warning("%d in-memory jobs had not run when the worker stopped", left)


async def _stop(core: Core, worker: Worker, drain_timeout: float | None, keep_lanes: bool) -> None:
    drain = core.options.drain_timeout if drain_timeout is None else drain_timeout
    if not await worker.stop(drain):
        logger.warning(
            "jobs still running after drain_timeout=%g s were cancelled; registered ones "
            "go back to the queue",
            drain,
        )
    await worker.close()
    if not keep_lanes:
        core.plain.cancel_waiting("cancelled: the worker stopped before it ran")
    await core.backend.stopped()


async def join(core: Core, timeout: float | None) -> None:
    """``Errands.join``: wait until no job is unfinished, running a worker on this loop
    meanwhile if none runs in this process."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = JOIN_POLL_SHARED if core.backend.durable else JOIN_POLL_LOCAL

    async def idle() -> int:
        while left := await core.read(core.unfinished):
            if deadline is not None and time.monotonic() >= deadline:
                return left
            await anyio.sleep(pause)
        return 0

    if core.worker is not None:
        left = await idle()
    else:
        # The temporary worker stops at once: join's timeout bounds the whole call.
        async with serving(core, drain_timeout=0, keep_lanes=True):
            left = await idle()
    if left:
        raise WaitTimeout(f"{left} jobs were still waiting or running after {timeout:g} s")


async def run_until_signalled(core: Core) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    failure: list[BaseException] = []

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            stop.set()
        elif signum == signal.SIGINT:  # Ctrl-C again: do not wait for the drain
            logger.warning("second Ctrl-C; exiting without draining")
            logging.shutdown()
            os._exit(1)
        else:
            # A SIGTERM again is no order to hurry: `timeout`, `kill -- -PGID` and
            # some supervisors signal the process and its group, so it comes twice
            # (uvicorn, too, forces an exit only on a second SIGINT).
            logger.info("already stopping; draining (Ctrl-C again to exit at once)")

    def on_failure(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    observe(core, None)  # a worker of its own: OpenTelemetry's global providers, if set
    try:
        async with serving(core, owns_loop=True) as worker, scheduling(core):
            worker.on_failure = on_failure
            logger.info(
                "worker running on %s with %d task(s): %s",
                where_jobs_go(core),
                len(core.tasks),
                ", ".join(sorted(core.tasks)) or "none registered",
            )
            await stop.wait()
            if not failure:
                logger.info("stopping; draining for up to %g s", core.options.drain_timeout)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if failure:
        raise SystemExit(f"errands: {failure[0]}")


def where_jobs_go(core: Core) -> str:
    """Where the instance's jobs are, for the log lines at start."""
    backend = core.backend
    if backend.location == "memory":
        return backend.url
    if "://" in backend.location:  # a server's address says it all (PostgreSQL's)
        return backend.location
    return f"{backend.url} ({backend.location})"  # the URL, and the file it names


@asynccontextmanager
async def web_lifespan(core: Core, app: object, *, worker: bool) -> AsyncIterator[None]:
    """The app's lifespan: a line saying where jobs go, and the worker; the telemetry
    settings the app gave FastAPI, for the instance's spans and metrics."""
    observe(core, app)
    if not worker:
        announce("errands: jobs go to %s; no worker runs in this process", where_jobs_go(core))
        with on_this_loop(core):  # its requests' plain callables are its (only_registered)
            try:
                async with scheduling(core):
                    yield
            finally:
                # Said to the store (a web process is one of its processes too): not
                # left to look alive, and its unreleased jobs, if any, free at once.
                with anyio.CancelScope(shield=True):
                    await core.backend.stopped()
        return
    async with serving(core), scheduling(core):
        announce(
            "errands: worker running on %s with %d task(s)", where_jobs_go(core), len(core.tasks)
        )
        yield


def observe(core: Core, app: object) -> None:
    """Use the OpenTelemetry providers the app gave ``FastAPI(telemetry=...)``: a user
    configures telemetry once."""
    config = fastapi_telemetry(app) or {}
    if config.get("tracer_provider") is not None:
        core.tracing.provider = config["tracer_provider"]
    if config.get("metrics", True):  # errands' metrics where FastAPI's go (if anywhere)
        core.metrics.opentelemetry(config.get("meter_provider"))


def announce(message: str, *args: object) -> None:
    """An INFO line at start, where its reader looks: errands' logger when logging is
    set up, else uvicorn's (which a default uvicorn run shows), else nowhere louder."""
    ours = logging.getLogger("errands")
    if not ours.hasHandlers():
        server = logging.getLogger("uvicorn.error")
        if server.hasHandlers():
            server.info(message, *args)
            return
    ours.info(message.removeprefix("errands: "), *args)
