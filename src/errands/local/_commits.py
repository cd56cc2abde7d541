"""What a SQL store does once a thread's writes are committed (``after_commit``): inside
a group-commit batch, at the batch's commit (never on its rollback); outside one, at
once (the write's own transaction has committed). Shared by the SQLite and
PostgreSQL stores, whose ``batch`` collects the actions with ``_after_batch``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class CommitHooks:
    #: Per thread: ``batch`` (the batch's transaction, once begun) and ``after``.
    _local: threading.local

    def after_commit(self, action: Callable[[], None], *, once: bool = False) -> None:
        """Do ``action`` once what this thread wrote is committed: now, after a write of
        its own; at the end of the batch (if it commits) inside one (with ``once``, not
        if the batch will do it already)."""
        after: list[Callable[[], None]] | None = getattr(self._local, "after", None)
        if after is not None and getattr(self._local, "batch", None) is not None:
            if not (once and action in after):
                after.append(action)
        else:
            action()

    @contextlib.contextmanager
    def _after_batch(self) -> Iterator[None]:
        """Around a batch: the actions its writes asked for run if it commits (leaves
        without an error)."""
        after: list[Callable[[], None]] = []
        self._local.after = after
        try:
            yield
        finally:
            self._local.after = None
        for action in after:
            action()
