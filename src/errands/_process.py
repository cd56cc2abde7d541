"""Running a registered ``def`` task in a process of its own (``@errands.task(process=True)``).

CPU-bound work then uses another core instead of holding the GIL the web server
needs, and a timeout really stops it: the process is killed, where a thread could
only be abandoned. Each attempt gets a fresh process from a forkserver, so nothing
leaks from one attempt to the next; the task's module is preloaded into the
forkserver so that starting one costs a fork, not an import. The function is found
in the child by the module and qualified name of the function registered here, and
arguments and results cross as JSON text, never pickle.

A task's process dies with the worker that started it, however the worker ends (even
SIGKILL), so that a job the worker lost is never run by an orphan at the same time as
by the worker that takes it over. On Linux the kernel does this (``PR_SET_PDEATHSIG``,
see ``_die_with_worker``); elsewhere a thread in the child watches the worker and ends
the process, which it can only do while the task lets Python run (a C extension that
holds the GIL delays it). Processes the task starts itself are not covered, nor, on
Linux, tasks whose worker shares its forkserver with other multiprocessing children
still running: the forkserver, and so the task, outlives the worker until they exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import anyio

from ._loops import LoopLocal
from ._payload import encode_result
from ._record import describe_error
from .exceptions import ErrandsError, NotSerializable, TaskTimeout


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


# Whether children tie themselves to the worker with prctl (tests turn it off to run
# the fallback that other platforms use).
_PRCTL = sys.platform == "linux"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_worker(forkserver: int | None) -> bool:
    """Make this process die with the worker; False if its forkserver is already gone.

    With a forkserver, this process's parent is the forkserver, not the worker, and the
    forkserver exits only once the write end of its "alive" pipe is closed everywhere:
    in the worker and in every child it forked, each of which inherits a copy. So a
    child that only asked for PR_SET_PDEATHSIG would keep the forkserver alive, and so
    itself, after a SIGKILLed worker. Closing the child's copy leaves the worker as the
    only holder: when the worker dies the forkserver exits, and the kernel SIGKILLs
    this process. The kernel does it all: no thread here that a task holding the GIL
    could starve, and none to make an os.fork() in the task warn. What it costs is the
    forkserver's interpreter shutdown, which this process outlives (0.2 to 0.8 s with
    a FastAPI app's modules preloaded, on a busy machine): far less than a lease.
    (Having the forkserver itself watch the worker would need code of ours to run in
    it, which only preloaded imports can do, and only if errands started it: another
    library, or Python 3.14's default start method, may have started it first.)
    """
    state = _forkserver_state()
    prctl = _load_prctl() if _PRCTL and forkserver is not None and state is not None else None
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _watch_worker()
        return True
    # The signal is only sent for a parent that dies from now on: had the forkserver
    # died already (it cannot exit while we hold its alive pipe, so something killed
    # it), we would be adopted by another process and never be signalled.
    if os.getppid() != forkserver:
        return False
    # After prctl, not before: had the worker died already, this makes the forkserver
    # exit, which now kills us.
    os.close(state._forkserver_alive_fd)
    state._forkserver_alive_fd = None
    return True


def _forkserver_state() -> Any:
    """multiprocessing's forkserver state in this process, if a forkserver forked it."""
    if "multiprocessing.forkserver" not in sys.modules:
        return None
    state = getattr(sys.modules["multiprocessing.forkserver"], "_forkserver", None)
    return state if getattr(state, "_forkserver_alive_fd", None) is not None else None


def _load_prctl() -> Callable[..., int] | None:
    # ctypes is preloaded in the forkserver (see _run_one), and with it pythonapi, a
    # handle on this process's own symbols, libc's among them: importing ctypes here
    # would cost each attempt milliseconds, and opening a handle (CDLL(None)) 0.2 ms.
    import ctypes

    try:
        prctl = ctypes.pythonapi["prctl"]
    except AttributeError:
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    result: Callable[..., int] = prctl
    return result


def _watch_worker() -> None:
    """End this process when the worker exits (where the kernel cannot be asked to)."""
    worker = multiprocessing.parent_process()
    if worker is None:
        return

    def watch() -> None:
        # Waits until the pipe whose other end only the worker holds is closed: the
        # worker has exited.
        worker.join()
        os._exit(1)

    threading.Thread(target=watch, name="errands-worker-watch", daemon=True).start()


def _child(
    name: str,
    module: str,
    qualname: str,
    payload: str,
    conn: Connection,
    forkserver: int | None,
) -> None:
    # Ctrl-C reaches the whole process group: the worker decides what stops, and a
    # drain lets this attempt finish (or gives the job back), not a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _die_with_worker(forkserver):
        with contextlib.suppress(OSError):
            conn.send(
                (
                    "error",
                    f"ProcessOrphaned: the forkserver (pid {forkserver}) that started the "
                    f"process for this attempt died before the process could be tied to "
                    f"its worker, so it did not run the task; a new attempt starts a new "
                    f"forkserver",
                    None,
                )
            )
        return
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        func = getattr(target, "func", target)  # the Task wrapper, or the function
        args, kwargs = json.loads(payload)
        result = func(*args, **kwargs)
        try:
            # The same checks as any task's result (depth, digits), here: a result JSON
            # cannot carry must not fail as a crash of this process.
            encode_result(name, result)
        except NotSerializable as exc:
            conn.send(("refused", str(exc)))
            return
        conn.send(("ok", json.dumps(result, allow_nan=False)))
    except BaseException as exc:
        conn.send(("error", *describe_error(exc)))
    finally:
        conn.close()


class ProcessRunner:
    """At most ``processes`` task processes at a time."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._slots = LoopLocal(lambda: asyncio.Semaphore(self.processes))
        self._preloaded: set[str] = set()
        self._in_use = 0  # calls holding or waiting for a slot, on every loop

    def free(self) -> int:
        """How many more calls would start at once."""
        return max(0, self.processes - self._in_use)

    def preload(self, module: str) -> None:
        """Import ``module`` in the forkserver when it starts (before the first call)."""
        self._preloaded.add(module)

    async def call(
        self, module: str, qualname: str, payload: str, *, timeout: float | None, name: str
    ) -> Any:
        self._in_use += 1
        try:
            async with self._slots.get():
                return await self._run_one(module, qualname, payload, timeout, name)
        finally:
            self._in_use -= 1

    async def _run_one(
        self, module: str, qualname: str, payload: str, timeout: float | None, name: str
    ) -> Any:
        context = _context()
        if hasattr(context, "set_forkserver_preload") and self._preloaded:
            context.set_forkserver_preload([*sorted(self._preloaded), "ctypes"])
        receiver, sender = context.Pipe(duplex=False)
        process: BaseProcess | None = None
        try:
            # Shielded: a child started while we are cancelled must still be known to us,
            # so that the finally below kills and reaps it.
            with anyio.CancelScope(shield=True):
                process = started = await anyio.to_thread.run_sync(
                    _start, context, (name, module, qualname, payload, sender)
                )
            sender.close()
            loop = asyncio.get_running_loop()
            reply = loop.run_in_executor(None, _receive, receiver)
            with anyio.move_on_after(timeout) as scope:
                message = await reply
            if scope.cancelled_caught:
                assert timeout is not None
                started.kill()
                raise TaskTimeout.after(name, timeout, "; its process was killed")
        finally:
            sender.close()
            if process is not None:
                if process.is_alive():
                    process.kill()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(process.join)
            receiver.close()
        if message is None:
            raise TaskProcessError(
                f"ProcessDied: the process running task {name!r} exited with code "
                f"{started.exitcode} before returning",
                None,
            )
        if message[0] == "ok":
            return json.loads(message[1])
        if message[0] == "refused":
            raise NotSerializable(message[1])
        raise TaskProcessError(message[1], message[2])


def _start(context: multiprocessing.context.BaseContext, args: tuple[Any, ...]) -> BaseProcess:
    """Start the process that runs ``_child(*args, forkserver)``."""
    forkserver: int | None = None
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver as server

        server.ensure_running()  # start() would too; we need its pid first
        forkserver = getattr(server._forkserver, "_forkserver_pid", None)
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=_child, args=(*args, forkserver), daemon=True
    )
    process.start()
    return process


def _receive(conn: Connection) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None
