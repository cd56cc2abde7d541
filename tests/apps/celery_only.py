"""A module holding only a Celery app, for ``celery://module:attribute`` URLs."""

from celery import Celery

from tests.apps.modes import REDIS_BACKEND, REDIS_BROKER

celery_app = Celery("celery-only", broker=REDIS_BROKER, backend=REDIS_BACKEND)
