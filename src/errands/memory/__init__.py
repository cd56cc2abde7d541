"""The memory mode (``memory://``): jobs live in this process and die with it, as
with FastAPI's own background tasks; for tests, development and work that may be
lost on a restart."""

from __future__ import annotations

from .._options import Runtime
from ..exceptions import ConfigurationError
from ..local import LocalBackend
from ._store import MemoryStore

__all__ = ["MemoryStore", "open_backend"]


def open_backend(url: str, runtime: Runtime) -> LocalBackend:
    if url.rstrip("/") != "memory:":
        raise ConfigurationError(
            f"invalid errands URL {url!r}: the memory store takes no path or options; "
            f"use 'memory://'"
        )
    return LocalBackend(MemoryStore(), runtime, "memory://")
