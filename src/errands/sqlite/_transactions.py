"""The SQLite store's connections and transactions, and the mapping of its errors.

Each thread gets its own connection (SQLite connections are not to be shared while
in use). A write is one ``BEGIN IMMEDIATE`` transaction, or, inside ``batch`` (group
commit), one savepoint of the batch's transaction. No ``sqlite3`` error leaves a
method decorated with ``mapped``: it becomes the ``StoreError`` that ``_errors``
chooses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from ..exceptions import StoreError
from ..local._commits import CommitHooks
from ._errors import store_error

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="Transactions")


def mapped(method: Callable[Concatenate[T, P], R]) -> Callable[Concatenate[T, P], R]:
    """No raw ``sqlite3`` error escapes ``method``: it leaves as a ``StoreError``."""

    @functools.wraps(method)
    def call(self: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    return call


class Transactions(CommitHooks):
    def __init__(self, path: str | Path, busy_timeout: float) -> None:
        self.path = str(path)
        #: The file's absolute path: errors name it, whatever the current directory.
        self.location = os.path.abspath(self.path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect(self._busy_timeout)
        return db

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        """A new connection of this thread's (closed with the store)."""
        db = sqlite3.connect(
            self.path,
            timeout=busy_timeout,
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            db.close()
            raise
        with self._lock:
            # Threads come and go (thread pools shrink): close what dead ones left.
            alive = []
            for thread, conn in self._connections:
                if thread.is_alive():
                    alive.append((thread, conn))
                else:
                    conn.close()
            alive.append((threading.current_thread(), db))
            self._connections = alive
        return db

    @contextlib.contextmanager
    def _without_waiting(self) -> Iterator[None]:
        """Inside, this thread's statements go through a connection of its own that
        never waits for another's lock (it fails with SQLITE_BUSY at once) and never
        copies the journal back into the file (a checkpoint: other connections' commits
        do): a caller on an event loop is held for its statements alone."""
        now: sqlite3.Connection | None = getattr(self._local, "now", None)
        if now is None:
            now = self._connect(0)
            try:
                now.execute("PRAGMA wal_autocheckpoint = 0")
            except sqlite3.Error:
                now.close()
                raise
            self._local.now = now
        kept = getattr(self._local, "db", None)
        self._local.db = now
        try:
            yield
        finally:
            self._local.db = kept

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return store_error(exc, self.location, self._busy_timeout)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes of this thread (group commit).

        Inside it each write runs in a savepoint (or, if it is a single statement, as
        that statement): a write that fails is undone alone. The transaction begins
        with the first write that needs it: a batch of idle polls (claims that find
        nothing due) never takes the write lock.
        """
        self._local.batch = None
        self._local.lazy = True
        with self._after_batch():
            try:
                yield
                db: sqlite3.Connection | None = self._local.batch
                if db is not None:
                    try:
                        db.execute("COMMIT")
                    except sqlite3.Error as exc:
                        raise self._error(exc) from exc
            except BaseException:
                db = self._local.batch
                if db is not None:
                    _rollback(db)
                raise
            finally:
                self._local.lazy = False
                self._local.batch = None

    @contextlib.contextmanager
    def _write(self, *, one_statement: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; nothing of it is kept if any statement fails.

        A write of ``one_statement`` needs no savepoint in a batch: SQLite undoes a
        failed statement by itself.
        """
        batch: sqlite3.Connection | None = getattr(self._local, "batch", None)
        if batch is None and getattr(self._local, "lazy", False):
            batch = self._local.batch = self._begin()
        if batch is not None:
            self._check_batch(batch)
            if one_statement:
                yield batch
                return
            batch.execute("SAVEPOINT errands_write")
            try:
                yield batch
            except BaseException:
                if batch.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        batch.execute("ROLLBACK TO errands_write")
                        batch.execute("RELEASE errands_write")
                raise
            batch.execute("RELEASE errands_write")
            return
        db = self._begin()
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _begin(self) -> sqlite3.Connection:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        return db

    def _check_batch(self, db: sqlite3.Connection) -> None:
        if not db.in_transaction:
            # An earlier write's error (a full disk, an I/O error) made SQLite roll the
            # whole batch back: nothing more may run, or it would commit on its own.
            raise StoreError(
                f"the SQLite store {self.location} rolled back a group of writes after an "
                f"error; nothing of it was stored"
            )

    def close(self) -> None:
        with self._lock:
            for _, db in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()
        self._local = threading.local()


def _rollback(db: sqlite3.Connection) -> None:
    # Quietly: the error that made us roll back is the one to report.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
