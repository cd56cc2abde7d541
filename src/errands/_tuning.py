"""The tuning constants of errands, in one place: a line each on what it bounds.

User-facing settings are ``Errands(...)`` arguments; these are the ones below them.
"""

from __future__ import annotations

# -- requests ------------------------------------------------------------------

#: Seconds a request's jobs wait for their response to be sent (the ``hold``
#: default) before any worker may run them, while the process that added them lives.
HOLD = 60.0

# -- workers -------------------------------------------------------------------

#: How often an idle worker looks in a store that other processes add to (SQLite):
#: an idle poll is one indexed read.
POLL_SHARED = 0.01
#: How often an idle worker looks in a store that tells it of jobs other processes
#: add (PostgreSQL: LISTEN/NOTIFY): for what nobody announces, jobs that fall due
#: later (a delay, another process's retry) and leases that run out.
POLL_ANNOUNCED = 0.2
#: The same for the SQLite store, whose processes wake each other through sockets
#: beside the file: an idle poll costs less there, and delayed jobs start closer to
#: their time.
POLL_ANNOUNCED_SQLITE = 0.05
#: How often an idle worker looks in the memory store (only this process adds to
#: it, and wakes the worker when it does).
POLL_LOCAL = 1.0
#: How often a worker purges finished jobs past the retention time.
PURGE_EVERY = 60.0
#: A job whose worker died this many times is failed as poison, not run again.
MAX_LOST_LEASES = 5
#: The longest pause between two tries of a store write or claim that failed for a
#: reason that may pass (a locked file, a full disk); pauses double up to it.
MAX_STORE_BACKOFF = 5.0
#: The first such pause.
MIN_STORE_BACKOFF = 0.05

# -- retries -------------------------------------------------------------------

#: No single wait between two attempts is longer than this, however many retries.
MAX_BACKOFF = 3600.0
#: Celery mode: the shortest wait before a retry (Celery records the retry just
#: after sending it, and that record must land before the next attempt's).
MIN_CELERY_RETRY_DELAY = 0.1

# -- memory ----------------------------------------------------------------------

#: Finished jobs the memory store keeps for lookups, and finished plain-callable
#: records each instance keeps; oldest dropped first.
KEEP_FINISHED = 10_000
#: How often a request waiting for room in a full backlog looks again.
BACKLOG_POLL = 0.005

# -- arguments and results ---------------------------------------------------------

#: How deep lists and dicts may nest in a job's arguments or result. Real data is a
#: few levels deep (a few dozen at most); far deeper data is a mistake or an attack,
#: and everything on a job's way (json, SQLite's JSON, Redis's cjson) gives up near
#: 1000 levels.
MAX_DEPTH = 256

# -- waiting ---------------------------------------------------------------------

#: How often ``Job.wait()`` reads the store for jobs finished by other processes.
WAIT_POLL = 0.5
#: How often ``join()`` looks at what is left: in memory, and in a shared store.
JOIN_POLL_LOCAL = 0.005
JOIN_POLL_SHARED = 0.02

# -- stores ----------------------------------------------------------------------

#: SQLite: jobs deleted per transaction by a purge (a large purge never holds the
#: write lock long).
PURGE_CHUNK = 1000
#: SQLite: how long a write waits for another process's write lock.
BUSY_TIMEOUT = 30.0

# -- Celery mode -----------------------------------------------------------------

#: How many published-and-unfinished ids ``join`` follows.
CELERY_TRACKED = 100_000
#: How many of this process's latest jobs ``jobs()`` can list.
CELERY_RECENT = 1_000
#: An attempt is recorded as running once it has run this long (seconds).
CELERY_RUNNING_AFTER = 0.01
#: How long ``stats()`` waits for live workers to answer ``celery inspect``.
CELERY_INSPECT_TIMEOUT = 1.0
#: kombu's retries of a publish whose connection failed (bounded by publish_timeout).
CELERY_PUBLISH_RETRIES = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
#: The longest error and traceback of a failed attempt that travel with its retry's
#: message (AMQP headers must stay small): longer ones are cut, with a marker.
CELERY_MAX_ERROR = 2_000
CELERY_MAX_TRACEBACK = 8_000

#: The longest duration an option or a task's timeout may give (ten years): a date
#: further ahead than this is of no use, and far enough ahead is none a date can hold.
MAX_SECONDS = 10 * 365 * 24 * 3600
#: The shortest ``lease`` (renewed every third of it).
MIN_LEASE = 0.1
#: Priorities run from -MAX_PRIORITY to MAX_PRIORITY (Celery's brokers map them onto
#: their own few levels: see docs/celery.md).
MAX_PRIORITY = 1_000_000
#: How often a worker asks whether the jobs it runs were cancelled (errands.cancel):
#: an async def attempt stops within about this long.
CANCEL_POLL = 1.0
#: How long a schedule waits before it tries again to add a tick's job the store refused.
SCHEDULE_RETRY = 2.0
#: Celery mode: a job held back by its task's limits is published again to come back
#: after this pause, doubling each time it is held, up to the maximum (jittered).
CELERY_HELD_PAUSE = 0.05
CELERY_HELD_MAX_PAUSE = 2.0
