"""Celery mode on a Redis broker: a job a dead worker held runs again within about a
lease, and one a live worker holds does not run twice.

kombu emulates acknowledgements on Redis: a taken message is recorded as unacknowledged,
and a sweep puts back those recorded longer ago than ``visibility_timeout`` (an hour by
default). errands sets that timeout to the instance's ``lease``, and its workers renew
the records of the messages they hold every third of it (``Renewal``), as the other
modes renew a job's lease; ``configure`` says what else it sets, and only where the
app set nothing. docs/celery.md explains it all: the settings, the duplicate-run
trade-off, and kombu's gap that no setting covers.
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
