"""From the URL given to ``Errands(...)`` to a store."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .exceptions import ConfigurationError
from .local._store import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from celery import Celery

DEFAULT_URL = "sqlite:///errands.db"
ENV_VAR = "ERRANDS_URL"
ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "celery://module:attribute (a Celery app)"
)


def resolve_url(url: str | None) -> str:
    """The explicit URL, else ``$ERRANDS_URL``, else the default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def open_store(url: str, *, publish_timeout: float = 5.0) -> Store:
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
    if scheme == "celery":
        from .celery import CeleryStore

        return CeleryStore(load_celery_app(url), publish_timeout=publish_timeout)
    raise ConfigurationError(
        f"invalid errands URL {url!r}: unknown store {scheme or '(no scheme)'!r}. "
        f"Accepted forms: {ACCEPTED}"
    )


def import_attribute(target: str) -> object:
    """The object named by ``module:attribute``, imported as uvicorn imports an app
    (the current directory first on ``sys.path``). ValueError for a malformed target;
    ImportError if the module cannot be imported."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute or "/" in target:
        raise ValueError(f"expected module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), attribute, None)


def load_celery_app(url: str) -> Celery:
    """The Celery app named by ``celery://module:attribute``."""
    from celery import Celery

    target = url[len("celery://") :]
    try:
        app = import_attribute(target)
    except ValueError:
        raise ConfigurationError(
            f"invalid errands URL {url!r}: name the Celery app as celery://module:attribute, "
            f"e.g. celery://app.worker:celery_app"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(f"errands URL {url!r}: cannot import it: {exc}") from exc
    if not isinstance(app, Celery):
        raise ConfigurationError(
            f"errands URL {url!r}: {target} is {type(app).__name__}, not a Celery app"
        )
    return app
