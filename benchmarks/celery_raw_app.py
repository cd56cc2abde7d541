"""The Celery-mode benchmark's raw Celery apps, no errands on them, each its own app so
that neither's configuration leaks into the other's (or errands' into theirs):

- ``required_app``: raw Celery configured as errands requires and sets on the app it
  is given (``celery/_publish.py``, ``celery/_redis.py``) and on its tasks
  (``celery/_task.py``): a Redis result backend with ``result_extended``, JSON
  (``task_serializer``, ``accept_content``), ``acks_late`` and
  ``reject_on_worker_lost`` on the task, ``worker_prefetch_multiplier=1``, and the
  broker transport options errands sets on a Redis broker for its default
  ``lease`` of 30 s (``visibility_timeout``, the sweep's interval, throttle and mutex,
  ``socket_timeout`` = ``publish_timeout``). Its unacknowledged-message keys are its
  own (``bench_required_unacked``...), as errands' are (``errands_unacked``...).
- ``defaults_app``: raw Celery's defaults: no result backend (its task ignores
  results), JSON (Celery 5's default), early acknowledgement, the default prefetch
  (4 a process) and transport options.

Every side's job is the same: one ``INCR`` of ``COUNTER_KEY`` (broker DB 12), which
the benchmark reads to know that all ran, with or without a result backend.

    celery -A benchmarks.celery_raw_app:required_app worker -Q bench-required-q ...
    celery -A benchmarks.celery_raw_app:defaults_app worker -Q bench-defaults-q ...
"""

import os

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
BACKEND = os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/13")
REQUIRED_QUEUE = "bench-required-q"
DEFAULTS_QUEUE = "bench-defaults-q"
COUNTER_KEY = "bench-ran"

_counter: "redis.Redis | None" = None


def ran() -> None:
    """The job, on every side: one INCR (one client per process, made on first use)."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(BROKER)
    _counter.incr(COUNTER_KEY)


#: What errands sets on a Redis-broker app for lease=30 s and publish_timeout=5 s
#: (celery_mode.py checks it against the errands app's own, at start).
REQUIRED_TRANSPORT = {
    "socket_timeout": 5.0,
    "visibility_timeout": 30.0,
    "unacked_key": "bench_required_unacked",
    "unacked_index_key": "bench_required_unacked_index",
    "unacked_mutex_key": "bench_required_unacked_mutex",
    "unacked_restore_interval": 3.0,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": 10.0,
}

required_app = Celery("bench-required", broker=BROKER, backend=BACKEND)
required_app.conf.update(
    task_default_queue=REQUIRED_QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_extended=True,
    worker_prefetch_multiplier=1,
    broker_transport_options=REQUIRED_TRANSPORT,
    broker_connection_retry_on_startup=True,
)


@required_app.task(
    name="bench.required_noop",
    shared=False,
    serializer="json",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=False,
)
def required_noop(i: int) -> None:
    ran()


defaults_app = Celery("bench-defaults", broker=BROKER)
defaults_app.conf.update(
    task_default_queue=DEFAULTS_QUEUE,
    broker_connection_retry_on_startup=True,
)


@defaults_app.task(name="bench.defaults_noop", shared=False, ignore_result=True)
def defaults_noop(i: int) -> None:
    ran()
