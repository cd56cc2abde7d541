"""Running a registered ``def`` task in a process of its own (``@errands.task(process=True)``).

CPU-bound work then uses another core instead of holding the GIL the web server
needs, and a timeout really stops it: the process is killed, where a thread could
only be abandoned. Each attempt gets a fresh process from a forkserver, so nothing
leaks from one attempt to the next; the task's module is preloaded into the
forkserver so that starting one costs a fork, not an import. The function is found
in the child by the module and qualified name of the function registered here, and
arguments and results cross as JSON text, never pickle.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import signal
import sys
import weakref
from multiprocessing.connection import Connection
from typing import Any

import anyio

from ._loops import PerLoop, for_loop
from ._record import describe_error
from .exceptions import ErrandsError, TaskTimeout


class TaskProcessError(ErrandsError):
    """A task run in a process raised (``error`` and ``traceback`` are the child's), or
    its process died."""

    def __init__(self, error: str, trace: str | None) -> None:
        super().__init__(error)
        self.error = error
        self.trace = trace


def _context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if sys.platform == "linux" else "spawn"
    return multiprocessing.get_context(method)


def _child(module: str, qualname: str, payload: str, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group: the worker decides what stops, and a
    # drain lets this attempt finish (or gives the job back), not a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        func = getattr(target, "func", target)  # the Task wrapper, or the function
        args, kwargs = json.loads(payload)
        result = func(*args, **kwargs)
        conn.send(("ok", json.dumps(result, allow_nan=False)))
    except BaseException as exc:
        conn.send(("error", *describe_error(exc)))
    finally:
        conn.close()


class ProcessRunner:
    """At most ``processes`` task processes at a time."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._slots: PerLoop[asyncio.Semaphore] = weakref.WeakKeyDictionary()
        self._preloaded: set[str] = set()

    def preload(self, module: str) -> None:
        """Import ``module`` in the forkserver when it starts (before the first call)."""
        self._preloaded.add(module)

    async def call(
        self, module: str, qualname: str, payload: str, *, timeout: float | None, name: str
    ) -> Any:
        async with for_loop(self._slots, lambda: asyncio.Semaphore(self.processes)):
            return await self._run_one(module, qualname, payload, timeout, name)

    async def _run_one(
        self, module: str, qualname: str, payload: str, timeout: float | None, name: str
    ) -> Any:
        context = _context()
        if hasattr(context, "set_forkserver_preload") and self._preloaded:
            context.set_forkserver_preload(sorted(self._preloaded))
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(  # type: ignore[attr-defined]
            target=_child, args=(module, qualname, payload, sender), daemon=True
        )
        try:
            # Shielded: a child started while we are cancelled must still be known to us,
            # so that the finally below kills and reaps it.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(process.start)
            sender.close()
            loop = asyncio.get_running_loop()
            reply = loop.run_in_executor(None, _receive, receiver)
            with anyio.move_on_after(timeout) as scope:
                message = await reply
            if scope.cancelled_caught:
                process.kill()
                raise TaskTimeout(
                    f"task {name!r} timed out after {timeout:g} s; its process was killed"
                )
        finally:
            sender.close()
            if process.pid is not None:
                if process.is_alive():
                    process.kill()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(process.join)
            receiver.close()
        if message is None:
            raise TaskProcessError(
                f"ProcessDied: the process running task {name!r} exited with code "
                f"{process.exitcode} before returning",
                None,
            )
        if message[0] == "ok":
            return json.loads(message[1])
        raise TaskProcessError(message[1], message[2])


def _receive(conn: Connection) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None
