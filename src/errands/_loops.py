"""State kept per event loop (a group commit, lease renewals, process slots): each
loop that uses an Errands instance gets its own, dropped with the loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PerLoop = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T]


def loop_entry(table: PerLoop[T], make: Callable[[], T]) -> T:
    """The running loop's entry of ``table``, made by ``make`` on first use."""
    loop = asyncio.get_running_loop()
    value = table.get(loop)
    if value is None:
        value = table[loop] = make()
    return value
