"""State kept per event loop (a group commit, lease renewals, process slots): each
loop that uses an Errands instance gets its own, dropped with the loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

PerLoop = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T]


class LoopLocal(Generic[T]):
    """One value per event loop, made by ``make`` on first use, dropped with its loop.

    The last loop's value is found without a lookup in the weak table (which makes a
    weak reference to the loop each time): a server asks for it several times a job,
    always from the same loop. The values must allow weak references: the cache
    holds them weakly too, so that a value lives exactly as long as its loop."""

    __slots__ = ("_last", "_make", "_table")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._table: PerLoop[T] = weakref.WeakKeyDictionary()
        #: The last loop asked for, and its value (weakly, both).
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], weakref.ref[T]] | None = None

    def get(self) -> T:
        """The running loop's value."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop and (value := last[1]()) is not None:
            return value
        value = self._table.get(loop)
        if value is None:
            value = self._table[loop] = self._make()
        self._last = (weakref.ref(loop), weakref.ref(value))
        return value

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Forget ``loop``'s value; the value, if it had one."""
        self._last = None
        return self._table.pop(loop, None)
