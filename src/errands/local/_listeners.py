"""The listeners a store has started for its workers (``Announcing.listen``): each is
forgotten when its worker stops it, and the rest are stopped, and waited for, when the
store closes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Stoppable(Protocol):
    def close(self, *, wait: bool = False) -> None:
        """Stop; with ``wait``, return once its thread and connection are gone."""


class Listeners:
    def __init__(self) -> None:
        self._listeners: list[Stoppable] = []

    def keep(self, listener: Stoppable) -> Callable[[], None]:
        """Keep ``listener`` until stopped; what stops it (``listen``'s answer)."""
        self._listeners.append(listener)

        def unlisten() -> None:
            listener.close()
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unlisten

    def close(self) -> None:
        for listener in self._listeners:
            listener.close(wait=True)
        self._listeners.clear()
