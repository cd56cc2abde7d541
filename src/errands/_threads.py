"""The threads that run ``def`` tasks: a pool of their own, never the one that serves
sync endpoints.

Two things set it apart from ``ThreadPoolExecutor``:

- A timeout counts from when the function *starts*, not from when it was handed
  over: a call that waited for a free thread has not used any of its time.
- A thread cannot be stopped, so a call past its timeout is *abandoned*: its thread
  runs on until the function returns, and another thread takes its place, so that
  stuck calls do not take the pool with them. At most ``spare`` abandoned threads
  are replaced; past that, the pool has that many fewer threads to offer
  (``free()`` says so, and the worker claims no more ``def`` jobs than it shows)
  until abandoned calls return.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .exceptions import TaskTimeout

logger = logging.getLogger("errands")

_QUEUED, _RUNNING, _DONE, _ABANDONED, _CANCELLED = range(5)


class _Call:
    __slots__ = ("args", "context", "func", "future", "kwargs", "loop", "started", "state")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
    ) -> None:
        self.func, self.args, self.kwargs, self.future = func, args, kwargs, future
        self.loop = future.get_loop()
        self.context = contextvars.copy_context()
        self.started: float | None = None
        self.state = _QUEUED


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Threads:
    def __init__(self, size: int, name: str = "errands", spare: int | None = None) -> None:
        self.size = size
        #: How many abandoned threads are replaced at most (default: ``size``).
        self.spare = size if spare is None else spare
        self._name = name
        self._work: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # alive, abandoned ones included
        # Every item in the queue is promised to one thread: an idle one, a new one,
        # or the next to finish (``_waiting``: items no thread was free for).
        self._idle = 0
        self._waiting = 0
        self._busy = 0  # calls handed over and not finished, abandoned ones excluded
        self._abandoned = 0  # abandoned calls still running
        self._warned = False

    def free(self) -> int:
        """How many more calls would start at once."""
        stuck = max(0, self._abandoned - self.spare)  # abandoned past the cap, not replaced
        return max(0, self.size - self._busy - stuck)

    @property
    def abandoned(self) -> int:
        """Calls given up at their timeout whose function has not returned yet."""
        return self._abandoned

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        name: str = "",
    ) -> Any:
        """``func(*args, **kwargs)`` in a thread of the pool, in a copy of the caller's
        context; past ``timeout`` seconds from its start, ``TaskTimeout``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = _Call(func, args, kwargs, future)
        self._submit(call)
        try:
            if timeout is None:
                return await future
            while True:
                started = call.started
                left = timeout if started is None else started + timeout - time.monotonic()
                if started is not None and left <= 0 and self._abandon(call):
                    logger.warning(
                        "%s timed out after %g s; its thread cannot be stopped and runs on "
                        "until the function returns (another thread takes its place)",
                        name,
                        timeout,
                    )
                    raise TaskTimeout.after(name, timeout)
                done, _ = await asyncio.wait({future}, timeout=max(left, 0))
                if done:
                    return future.result()
        except asyncio.CancelledError:
            self._withdraw(call)  # a call that has not started never will
            raise

    def close(self) -> None:
        """Let idle threads end; calls still running finish on their own."""
        with self._lock:
            idle, self._idle = self._idle, 0
            self._threads -= idle  # each idle thread gets one None, and ends
        for _ in range(idle):
            self._work.put(None)

    def _withdraw(self, call: _Call) -> None:
        with self._lock:
            if call.state == _QUEUED:
                call.state = _CANCELLED
                self._busy -= 1

    def _submit(self, call: _Call) -> None:
        start = False
        with self._lock:
            self._busy += 1
            if self._idle:
                self._idle -= 1
            elif self._threads < self._target():
                self._threads += 1
                start = True
            else:
                self._waiting += 1
        self._work.put(call)
        if start:
            self._start_thread()

    def _target(self) -> int:
        return self.size + min(self._abandoned, self.spare)

    def _start_thread(self) -> None:
        threading.Thread(target=self._serve, name=f"{self._name}-def", daemon=True).start()

    def _abandon(self, call: _Call) -> bool:
        """Give up on a running call; False if it finished meanwhile."""
        with self._lock:
            if call.state != _RUNNING:
                return False
            call.state = _ABANDONED
            self._busy -= 1
            self._abandoned += 1
            replace = self._abandoned <= self.spare
            if replace:
                self._threads += 1
                if self._waiting:  # the new thread takes a call that waits
                    self._waiting -= 1
                else:
                    self._idle += 1
            warn = not replace and not self._warned
            self._warned = self._warned or warn
        if replace:
            self._start_thread()
        if warn:
            logger.warning(
                "%d def tasks abandoned at their timeout still run, more than the %d "
                "threads errands replaces: until some return, this worker runs fewer def "
                "jobs at once (it claims no more than it can start)",
                self._abandoned,
                self.spare,
            )
        return True

    def _serve(self) -> None:
        work = self._work
        while True:
            call = work.get()
            if call is None:
                return  # close() has counted this thread out
            with self._lock:
                skip = call.state == _CANCELLED  # withdrawn while it waited
                if not skip:
                    call.state = _RUNNING
                    call.started = time.monotonic()
            ok, value = True, None
            if not skip:
                try:
                    value = call.context.run(call.func, *call.args, **call.kwargs)
                except Exception as exc:
                    ok, value = False, exc
                except BaseException as exc:  # SystemExit, KeyboardInterrupt: not ours to end
                    ok, value = False, escaped(exc)
            with self._lock:
                abandoned = call.state == _ABANDONED
                if abandoned:
                    self._abandoned -= 1
                    if self._abandoned < self.spare:
                        self._warned = False
                elif not skip:
                    call.state = _DONE
                    self._busy -= 1
                # One thread too many once an abandoned call has returned: this one
                # ends (unless a call waits for it).
                leave = not self._waiting and self._threads > self._target()
                if leave:
                    self._threads -= 1
                elif self._waiting:
                    self._waiting -= 1
                else:
                    self._idle += 1
            if not abandoned and not skip:
                # Its event loop may have closed: then nobody waits for it any more.
                with contextlib.suppress(RuntimeError):
                    call.loop.call_soon_threadsafe(_settle, call.future, ok, value)
            del call, value
            if leave:
                return


def escaped(exc: BaseException) -> Exception:
    """A ``SystemExit`` or ``KeyboardInterrupt`` a task raised, as the task's failure:
    it must not end the worker that awaits it."""
    error = RuntimeError(
        f"the task raised {type(exc).__name__}({exc}), which would stop the process "
        f"running it; raise an exception instead"
    )
    error.__cause__ = exc
    return error
