"""Celery mode (``Errands(celery=app)``, or ``celery://module:attribute``): registered
tasks run on a Celery app's workers, with the same endpoint code.

``_backend.py`` is the web side (publishing, reading status), ``_task.py`` the
worker side (each registered task as a Celery task), ``_publish.py`` the broker and
result-backend plumbing, and ``_results.py`` errands' records in Celery's results.
"""

from __future__ import annotations

from celery import Celery

from .._modes import import_attribute
from .._options import Runtime
from ..exceptions import ConfigurationError
from ._backend import CeleryBackend

__all__ = ["CeleryBackend", "backend_for_app", "open_backend"]


def backend_for_app(app: Celery, runtime: Runtime) -> CeleryBackend:
    return CeleryBackend(app, runtime)


def open_backend(url: str, runtime: Runtime) -> CeleryBackend:
    """The backend of the Celery app named by ``celery://module:attribute``."""
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
    return CeleryBackend(app, runtime)
