"""Every error errands raises, under one root.

```
ErrandsError
 ├── ConfigurationError      bad URL or option, a task name registered twice, a
 │    │                      registered task used with another Errands instance
 │    └── InvalidOption      task.options(...) given a value it cannot take (also a
 │                           ValueError)
 ├── InvalidArguments        add_task() arguments that do not fit the task's signature
 │    ├── NotSerializable    an argument (or a result) that JSON cannot carry
 │    └── PayloadTooLarge    arguments larger than max_payload
 ├── StoreError              the store could not do what was asked (a full disk, a locked
 │    │                      file); nothing of that call was stored, and it may pass
 │    ├── StoreCorrupt       the store's file is not a database, or is damaged
 │    ├── StoreUnwritable    the store's file cannot be opened or written (read-only,
 │    │                      permissions, a missing directory)
 │    └── BrokerUnavailable  Celery mode: the broker did not take a job in publish_timeout
 ├── BacklogFull             the in-memory backlog stayed full for backlog_timeout
 ├── ResultTooLarge          recorded on a job whose result, as JSON, is larger than
 │                           max_result
 ├── TaskTimeout             recorded on a job whose attempt ran past its timeout
 └── WaitTimeout             Job.wait() / Errands.join() gave up (also a TimeoutError)
```

Errors raised *by tasks* are never re-raised to the code that added them: they are
logged on the ``errands`` logger and recorded on the job (``error``, ``traceback``).
"""

from __future__ import annotations

__all__ = [
    "BacklogFull",
    "BrokerUnavailable",
    "ConfigurationError",
    "ErrandsError",
    "InvalidArguments",
    "InvalidOption",
    "NotSerializable",
    "PayloadTooLarge",
    "ResultTooLarge",
    "StoreCorrupt",
    "StoreError",
    "StoreUnwritable",
    "TaskTimeout",
    "WaitTimeout",
]


class ErrandsError(Exception):
    """The root of every error errands raises."""


class ConfigurationError(ErrandsError):
    """An Errands instance or a task was set up in a way that cannot work."""


class InvalidOption(ConfigurationError, ValueError):
    """An option given to ``task.options(...)`` is not one errands can honour."""


class JobNotFound(ErrandsError, LookupError):
    """No job has this id: never added, dropped with its request, or purged."""


class InvalidArguments(ErrandsError, TypeError):
    """The arguments given to ``add_task`` do not fit the task's signature."""


class NotSerializable(InvalidArguments):
    """An argument or a result of a registered task cannot travel as JSON."""


class PayloadTooLarge(InvalidArguments):
    """A registered task's arguments, as JSON, are larger than ``max_payload`` bytes."""


class StoreError(ErrandsError):
    """The store could not do what was asked; nothing of that call was stored.

    Raised as such for what may pass by itself (a full disk, a file locked longer
    than the busy timeout); its subclasses say what will not.
    """


class StoreCorrupt(StoreError):
    """The store's file is not a database, or is damaged: restore it from a backup,
    or move it away to start with an empty one. Nothing heals it by waiting."""


class StoreUnwritable(StoreError):
    """The store's file cannot be opened or written: a read-only file or directory,
    missing permissions, or a directory that does not exist."""


class BrokerUnavailable(StoreError):
    """Celery mode: the broker did not take the jobs within ``publish_timeout`` seconds.

    The request fails as a whole (map it to ``503`` with an exception handler). A
    publish still in flight when the time ran out may yet reach the broker: its job
    then runs, though the client was told it failed (at least once, never lost).
    """


class BacklogFull(ErrandsError):
    """The in-memory backlog stayed at ``max_backlog`` for ``backlog_timeout`` seconds.

    Nothing was queued: the request (or the ``add_task`` call) failed as a whole.
    Map it to ``503 Service Unavailable`` with an exception handler.
    """


class ResultTooLarge(ErrandsError):
    """A registered task's result, as JSON, is larger than ``max_result`` bytes.

    Recorded on the job (which fails); store large results elsewhere and return a
    reference to them.
    """


class TaskTimeout(ErrandsError):
    """An attempt of a registered task ran longer than the task's ``timeout``."""

    @classmethod
    def after(cls, task: str, timeout: float, more: str = "") -> TaskTimeout:
        """The error an attempt of ``task`` records when it ran past ``timeout`` s."""
        return cls(f"task {task!r} timed out after {timeout:g} s{more}")


class WaitTimeout(ErrandsError, TimeoutError):
    """``Job.wait()`` or ``Errands.join()`` reached its timeout first."""
