"""The modes, and which one a URL picks.

A mode is a package with ``open_backend(url, runtime) -> Backend``; ``MODES`` maps a
URL's scheme to it. A new mode is one new folder and one line here.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._backend import Backend
    from ._options import Runtime

DEFAULT_URL = "sqlite:///errands.db"
ENV_VAR = "ERRANDS_URL"

#: scheme: (the package of the mode, the URL forms it takes, the extra it needs)
MODES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("errands.memory", "memory://", None),
    "sqlite": ("errands.sqlite", "sqlite:///relative/path.db, sqlite:////absolute/path.db", None),
    "celery": ("errands.celery", "celery://module:attribute (a Celery app)", "celery"),
    "postgresql": ("errands.postgres", "postgresql://user:password@host:5432/db", "postgres"),
    "postgres": ("errands.postgres", "postgres://user:password@host:5432/db", "postgres"),
}


def resolve_url(url: str | None) -> str:
    """The explicit URL, else ``$ERRANDS_URL``, else the default."""
    if url is not None and (not isinstance(url, str) or not url):
        raise ConfigurationError(
            f"the errands URL must be a non-empty str, got {url!r}; leave it out (None) "
            f"for ${ENV_VAR} or {DEFAULT_URL}"
        )
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def open_backend(url: str, runtime: Runtime) -> Backend:
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in MODES:
        accepted = ", ".join(forms for _, forms, _ in MODES.values())
        raise ConfigurationError(
            f"invalid errands URL {url!r}: unknown store {scheme or '(no scheme)'!r}. "
            f"Accepted forms: {accepted}"
        )
    package, _, extra = MODES[scheme]
    try:
        mode = importlib.import_module(package)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigurationError(
            f"errands URL {url!r} needs the {extra} extra: pip install 'errands[{extra}]' ({exc})"
        ) from exc
    backend: Backend = mode.open_backend(url, runtime)
    return backend


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
