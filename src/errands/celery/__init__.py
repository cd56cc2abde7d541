"""Celery mode: registered tasks run on a Celery app's workers."""

from ._publish import CeleryStore
from ._task import bind

__all__ = ["CeleryStore", "bind"]
