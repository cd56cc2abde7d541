"""The SQLite mode (the embedded default, ``sqlite:///errands.db``): jobs in one file,
shared by every process that opens it."""

from __future__ import annotations

from .._options import Runtime
from ..exceptions import ConfigurationError
from ..local import LocalBackend
from ._store import SQLiteStore

__all__ = ["SQLiteStore", "open_backend"]


def open_backend(url: str, runtime: Runtime) -> LocalBackend:
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path or "?" in path:
        raise ConfigurationError(
            f"invalid errands URL {url!r}: give the database file as sqlite:///jobs.db "
            f"(relative) or sqlite:////var/lib/app/jobs.db (absolute)"
        )
    if path == ":memory:" or path.startswith("file:") or "\x00" in path:
        raise ConfigurationError(
            f"invalid errands URL {url!r}: give a file's path. An in-memory SQLite database "
            f"is private to one connection, and errands uses one a thread; for jobs kept in "
            f"this process only, use memory://"
        )
    return LocalBackend(SQLiteStore(path), runtime, url)
