"""An Errands instance's worker running in this process: the lifespan that starts
and drains it, the signal handling of ``run_worker`` (what ``errands worker``
runs), and which instance's worker runs on which event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ._worker import Worker
from .exceptions import BacklogFull, ConfigurationError, StoreError

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("errands")

#: The instances whose worker runs on each event loop: where a request's plain
#: callables go when nothing else names an instance.
_RUNNING: dict[asyncio.AbstractEventLoop, list[Core]] = {}


def running_core() -> Core | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    cores = _RUNNING.get(loop)
    return cores[0] if cores else None


@asynccontextmanager
async def serving(core: Core, drain_timeout: float | None = None) -> AsyncIterator[Worker]:
    if core.worker is not None:
        raise ConfigurationError(
            "this Errands instance's worker is already running; enter its lifespan once"
        )
    backend = core.backend
    worker = Worker(concurrency=core.options.concurrency, plain=core.plain, threads=core.threads)
    worker.source = backend.source(worker)
    core.worker = worker
    loop = asyncio.get_running_loop()
    _RUNNING.setdefault(loop, []).append(core)
    try:
        await backend.started(worker)
        worker.start_loop()
        yield worker
    finally:
        try:
            drain = core.options.drain_timeout if drain_timeout is None else drain_timeout
            with anyio.CancelScope(shield=True):
                drained = await worker.stop(drain)
                if not drained:
                    logger.warning(
                        "jobs still running after drain_timeout=%g s were cancelled; "
                        "registered ones go back to the queue",
                        drain,
                    )
                await worker.close()
                await backend.stopped()
        finally:
            # Even if this task is cancelled natively while draining.
            cores = _RUNNING.get(loop, [])
            if core in cores:
                cores.remove(core)
            if not cores:
                _RUNNING.pop(loop, None)
            core.worker = None
            core.threads.close()
        left = core.backlog.size
        if left and not backend.durable:
            logger.warning("%d in-memory jobs had not run when the worker stopped", left)


async def run_until_signalled(core: Core) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    failure: list[BaseException] = []

    def on_signal() -> None:
        if stop.is_set():  # a second signal: do not wait for the drain
            logger.warning("second signal; exiting without draining")
            logging.shutdown()
            os._exit(1)
        stop.set()

    def on_failure(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        async with serving(core) as worker:
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
    store = getattr(core.backend, "store", None)
    location = getattr(store, "location", None)
    url = core.backend.url
    return f"{url} ({location})" if location and location != "memory" else url


@asynccontextmanager
async def web_lifespan(core: Core, app: object, *, worker: bool) -> AsyncIterator[None]:
    """The app's lifespan: default handlers, a line saying where jobs go, the worker."""
    add_default_handlers(app)
    if not worker:
        announce("errands: jobs go to %s; no worker runs in this process", where_jobs_go(core))
        yield
        return
    async with serving(core):
        announce(
            "errands: worker running on %s with %d task(s)", where_jobs_go(core), len(core.tasks)
        )
        yield


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


# -- default exception handlers ---------------------------------------------------------

#: What a client gets when errands cannot take a request's jobs: try again later.
_REFUSALS: dict[type[Exception], tuple[str, int]] = {
    BacklogFull: ("too many background jobs are waiting; try again shortly", 1),
    StoreError: ("background jobs cannot be stored right now; try again later", 5),
}
_last_logged = [0.0, 0]


def add_default_handlers(app: object) -> None:
    """Answer ``BacklogFull`` and ``StoreError`` with 503 and ``Retry-After``, unless the
    app has its own handler for them (or for a base class of theirs)."""
    handlers = getattr(app, "exception_handlers", None)
    add = getattr(app, "add_exception_handler", None)
    if not isinstance(handlers, dict) or add is None:
        return  # not a Starlette app
    added = False
    for error in _REFUSALS:
        if not any(isinstance(k, type) and issubclass(error, k) and k is not Exception
                   for k in handlers):  # fmt: skip
            add(error, _refuse)
            added = True
    if added and getattr(app, "middleware_stack", None) is not None:
        # Starlette built its middleware (with a copy of the handlers) on the lifespan's
        # first call: build it again, with ours, on the next request.
        app.middleware_stack = None  # type: ignore[attr-defined]


async def _refuse(request: Any, exc: Exception) -> Any:
    from starlette.responses import JSONResponse

    detail, retry_after = next(v for k, v in _REFUSALS.items() if isinstance(exc, k))
    now = time.monotonic()
    _last_logged[1] += 1
    if now - _last_logged[0] >= 5:  # one line every 5 s at most, however many requests
        logger.warning(
            "answered %d request(s) with 503 in the last %.0f s: %s",
            _last_logged[1],
            now - _last_logged[0] if _last_logged[0] else 0,
            exc,
        )
        _last_logged[0], _last_logged[1] = now, 0
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after)}
    )
