"""Celery mode on a Redis broker: a job a dead worker held runs again within about a
lease, and one a live worker holds does not run twice.

kombu's Redis transport emulates acknowledgements. A worker takes a message off its
queue (``BRPOP``), then records it as unacknowledged (a hash of messages and a
sorted set scored by delivery time); an acknowledgement deletes the record. Every
worker sweeps the sorted set now and then (``unacked_restore_interval``, under a lock
that expires after ``unacked_mutex_expire``) and puts back on their queues the
messages recorded longer ago than ``visibility_timeout``: that is the only way the
jobs of a worker that died come back. kombu's defaults are one hour, 10 s (every 10th
time: 100 s) and 300 s.

A shorter visibility timeout alone brings them back sooner, but it also puts back a
message whose worker is alive and still holds it: a job running longer than the
timeout, or waiting in the worker for its retry (an ETA) longer than it, or reserved
behind other jobs that long. The job then runs twice. So errands' workers renew
the records of the messages they hold (running, reserved, or waiting for their retry)
every third of the timeout, as the other modes renew a job's lease: the timeout then
bounds how long a dead worker's jobs wait, not how long a job may take.

Unless the app sets them, errands applies (``configure``):

- ``visibility_timeout``: the Errands instance's ``lease`` (30 s), renewed every
  third of it by each worker for what it holds (``Renewal``);
- ``unacked_restore_interval``: a tenth of the timeout (1 s to 10 s), with
  ``unacked_restore_throttle=1`` (each time sweeps);
- ``unacked_mutex_expire``: a third of the timeout (5 s to 300 s), so that a worker
  killed while it sweeps blocks the others' sweeps that long, not 300 s;
- ``unacked_key``, ``unacked_index_key``, ``unacked_mutex_key``: errands' own, when it
  sets the timeout: kombu's records are shared by every Celery app on the Redis
  database, and a short timeout must not put back other apps' messages, which nobody
  renews;
- ``worker_prefetch_multiplier=1``: with late acknowledgement a worker keeps each
  message it has reserved until it runs it, renewed, so reserving more than it can
  run would leave jobs waiting behind long ones while other workers are idle, and a
  killed worker would take more of them down for a lease.

A dead worker's jobs then run on another worker within ``visibility_timeout`` plus
``unacked_restore_interval`` (33 s with the defaults), plus ``unacked_mutex_expire``
should it die while sweeping. Duplicate runs remain possible when a live worker does
not renew in time: its process stopped (paused, swapped out) or cut off from Redis
for longer than two thirds of the timeout, or its clock behind the sweeping worker's
by that much (the records are scored by each worker's clock), or, in a gevent or
eventlet pool, a task computing that long without yielding. Upgrading: workers of an
earlier errands record in kombu's keys, which only they sweep; stop them gracefully
(SIGTERM puts back what they hold) rather than kill them.

What no setting covers: kombu takes a message off the queue before it records it as
unacknowledged, so a worker killed between the two loses that message: the reply to
its ``BRPOP`` is on its way or not yet read (1.7 ms at the median, 12 ms at the 99th
percentile, measured on a busy 2-core machine), each time it takes a message. At
most one a killed worker process; RabbitMQ has no such gap. Closing that gap takes a
change in kombu (taking and recording in one step on the server), not a setting.
Graceful shutdowns (SIGTERM) read that reply and put back all a worker holds.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from .._tuning import MAX_BACKOFF

if TYPE_CHECKING:
    from celery import Celery

    from .._task import Task

logger = logging.getLogger("errands")

#: errands' own names for kombu's records of unacknowledged messages (see above).
UNACKED_KEYS = {
    "unacked_key": "errands_unacked",
    "unacked_index_key": "errands_unacked_index",
    "unacked_mutex_key": "errands_unacked_mutex",
}

#: kombu's own defaults, which apply where the app sets nothing and errands does not.
KOMBU_VISIBILITY_TIMEOUT = 3600.0


@dataclass
class _App:
    """What errands applied to one Celery app, and the tasks it registered there."""

    visibility_timeout: float
    sweep: float
    renews: bool
    tasks: dict[str, Task[Any, Any]] = field(default_factory=dict)


_apps: weakref.WeakKeyDictionary[Celery, _App] = weakref.WeakKeyDictionary()


def configure(app: Celery, task: Task[Any, Any], lease: float) -> None:
    """Apply errands' defaults to ``app`` if its broker is Redis (once), with the
    Errands instance's ``lease``, and remember ``task`` for the check at worker start."""
    state = _apps.get(app)
    if state is None:
        if app.connection_for_write().transport.driver_type != "redis":
            return
        state = _apps[app] = _apply(app, lease)
    state.tasks[task.name] = task


def _apply(app: Celery, lease: float) -> _App:
    conf = app.conf
    options = dict(conf.broker_transport_options or {})
    renews = _renewable_kombu()
    if "visibility_timeout" not in options and renews:
        options["visibility_timeout"] = lease
        for name, key in UNACKED_KEYS.items():
            options.setdefault(name, key)
    timeout = float(options.get("visibility_timeout", KOMBU_VISIBILITY_TIMEOUT))
    options.setdefault("unacked_restore_interval", _between(timeout / 10, 1, 10))
    options.setdefault("unacked_restore_throttle", 1)
    options.setdefault("unacked_mutex_expire", _between(timeout / 3, 5, 300))
    conf.broker_transport_options = options
    if not _set_by_user(app, "worker_prefetch_multiplier"):
        conf.worker_prefetch_multiplier = 1
    if renews:
        app.steps["consumer"].add(Renewal)
    # Under `celery -A ... worker` as under `errands worker`; once Celery's logging is
    # set up (worker_init comes before it, and what it logs at INFO is lost). One
    # receiver for every app (connecting twice is a no-op), holding none of them.
    signals.worker_ready.connect(_at_worker_start)
    return _App(timeout, float(options["unacked_restore_interval"]), renews)


def _at_worker_start(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)  # the sender: the worker's consumer
    state = _apps.get(app) if app is not None else None
    if state is not None:
        _check(state)


def _check(state: _App) -> None:
    """Say at worker start what holds, and warn of tasks that may run twice."""
    timeout = state.visibility_timeout
    if state.renews:
        logger.info(
            "Redis broker: this worker renews the messages it holds every %g s; "
            "those of a worker that dies run again after visibility_timeout=%g s, "
            "looked for every %g s",
            timeout / 3,
            timeout,
            state.sweep,
        )
        return
    unsafe = [
        name
        for name, task in sorted(state.tasks.items())
        if (held := longest_hold(task)) is None or held >= timeout
    ]
    if unsafe:
        logger.warning(
            "Redis broker without renewal of held messages (this kombu version "
            "lacks what errands uses): an attempt of %s may run, or wait for its retry, "
            "longer than visibility_timeout=%g s, and would then be delivered again and "
            "run twice; give each a timeout= (and a backoff) whose sum stays under it, "
            "or set broker_transport_options['visibility_timeout'] above them",
            ", ".join(unsafe),
            timeout,
        )


def longest_hold(task: Task[Any, Any]) -> float | None:
    """The longest a worker may hold one of ``task``'s messages: its longest wait for
    a retry, then its attempt; None for a task without a timeout (no bound)."""
    policy = task.policy
    if policy.timeout is None:
        return None
    wait = min(MAX_BACKOFF, policy.backoff * 2 ** (policy.retries - 1)) if policy.retries else 0
    return wait + policy.timeout


class Renewal(bootsteps.StartStopStep):
    """A worker's renewal of the records of the messages it holds, every third of the
    visibility timeout, from a thread of its own (a task that holds the event loop,
    in the solo pool, does not stop it)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop: threading.Event | None = None

    def start(self, parent: Any) -> None:
        channel = getattr(getattr(parent, "task_consumer", None), "channel", None)
        if not _renewable(channel):
            return
        self._stop = stop = threading.Event()
        threading.Thread(
            target=_renew, args=(channel, stop), name="errands-redis-renewal", daemon=True
        ).start()

    def stop(self, parent: Any) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    shutdown = stop


def _renew(channel: Any, stop: threading.Event) -> None:
    qos = channel.qos
    period = float(channel.visibility_timeout) / 3
    failing = False
    while not stop.wait(period):
        try:
            # Only the consuming thread changes these; a copy is all we need, and
            # one taken mid-change is retaken next time.
            held = [tag for tag in list(qos._delivered) if tag not in qos._dirty]
        except RuntimeError:
            continue
        if not held:
            continue
        now = time.time()
        try:
            with channel.conn_or_acquire() as client:
                # XX: only records still there (not acknowledged, nor put back meanwhile).
                client.zadd(qos.unacked_index_key, dict.fromkeys(held, now), xx=True)
        except Exception as exc:
            if not failing:
                logger.warning(
                    "renewing this worker's %d held message(s) on Redis failed "
                    "(%s: %s); if it goes on past the visibility timeout, other workers "
                    "will run them again",
                    len(held),
                    type(exc).__name__,
                    exc,
                )
            failing = True
        else:
            failing = False


def _renewable(channel: Any) -> bool:
    from kombu.transport import redis

    return isinstance(channel, redis.Channel) and all(
        hasattr(channel.qos, name) for name in ("_delivered", "_dirty", "unacked_index_key")
    )


def _renewable_kombu() -> bool:
    """Whether this kombu's Redis transport keeps what ``Renewal`` reads: the delivery
    tags a channel holds, and the sorted set it records them in."""
    from kombu.transport import redis
    from kombu.transport.virtual import base

    return (
        all(hasattr(base.QoS, name) for name in ("_delivered", "_dirty"))
        and hasattr(redis.QoS, "unacked_index_key")
        and hasattr(redis.Channel, "conn_or_acquire")
    )


def _set_by_user(app: Celery, setting: str) -> bool:
    """Whether the app's configuration sets ``setting`` (not Celery's default)."""
    maps = getattr(app.conf, "maps", None)
    if not maps:
        return True  # cannot tell: leave it alone
    return any(setting in layer for layer in maps[:-1])


def _between(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
