"""From the URL given to ``Errands(...)`` to a store."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ._store import Store
from .exceptions import ConfigurationError
from .stores.memory import MemoryStore
from .stores.sqlite import SQLiteStore

DEFAULT_URL = "sqlite:///errands.db"
ENV_VAR = "ERRANDS_URL"
ACCEPTED = "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db"


def resolve_url(url: str | None) -> str:
    """The explicit URL, else ``$ERRANDS_URL``, else the default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def open_store(url: str) -> Store:
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "memory":
        if url.rstrip("/") != "memory:":
            raise ConfigurationError(
                f"invalid errands URL {url!r}: the memory store takes no path or options; "
                f"use 'memory://'"
            )
        return MemoryStore()
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path or "?" in path:
            raise ConfigurationError(
                f"invalid errands URL {url!r}: give the database file as sqlite:///jobs.db "
                f"(relative) or sqlite:////var/lib/app/jobs.db (absolute)"
            )
        return SQLiteStore(path)
    raise ConfigurationError(
        f"invalid errands URL {url!r}: unknown store {scheme or '(no scheme)'!r}. "
        f"Accepted forms: {ACCEPTED}"
    )
