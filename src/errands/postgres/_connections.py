"""The PostgreSQL store's connections and transactions, and the mapping of its errors.

Connections come from one bounded pool (``psycopg_pool``, opened by the first call that
needs it, in each process), in autocommit mode: a read
is one statement on a connection borrowed for it, a write is one transaction, or,
inside ``batch`` (group commit), one savepoint of the batch's transaction, which
keeps its connection until it commits. Each connection's ``search_path`` is the
store's schema alone, so statements name their tables bare. No ``psycopg`` error
leaves a method decorated with ``mapped``: it becomes the ``StoreError`` that
``_errors`` chooses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import Transaction
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from ..exceptions import StoreError
from ..local._commits import CommitHooks
from ._errors import store_error
from ._layout import open_layout

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="Connections")

Connection = psycopg.Connection[TupleRow]

#: The most connections one store holds: the group-commit thread of each event loop,
#: the worker's reads, and requests' reads in their thread pools share them.
POOL_SIZE = 10
#: How long a call waits for a free connection (or for the server to accept one)
#: before it fails with a ``StoreError`` (``503`` for a request).
POOL_TIMEOUT = 5.0
#: Once a call has waited in vain, the calls after it wait this long at most, until
#: one gets a connection: through an outage, the requests queued behind one that
#: waited get their ``503`` sooner. It is longer than the pool's pauses between
#: attempts to connect (2.3 s at most, see RECONNECT_TIMEOUT), so that a call made as
#: the server comes back still gets the connection the next attempt makes.
AWAY_TIMEOUT = 3.0
CONNECT_TIMEOUT = 5
#: A connection that has waited in the pool longer than this (seconds) is checked (an
#: empty query) before it is lent: one the server dropped meanwhile (a restart, a
#: failover, an idle timeout) is replaced instead of failing the call that gets it.
#: Connections in steady use skip the round trip.
CHECK_AFTER_IDLE = 1.0
#: How long one round of the pool's attempts to connect lasts (seconds; pauses of
#: about 1 s, 2 s, then what is left); the next round starts as it ends
#: (``_connect_again``), for as long as the server is away. With psycopg_pool's
#: default (5 minutes, pauses doubling to 2 minutes) a server back from a long outage
#: went unused for up to as long.
RECONNECT_TIMEOUT = POOL_TIMEOUT


def mapped(method: Callable[Concatenate[T, P], R]) -> Callable[Concatenate[T, P], R]:
    """No raw ``psycopg`` error escapes ``method``: it leaves as a ``StoreError``."""

    @functools.wraps(method)
    def call(self: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    return call


def committed(transaction: Transaction) -> None:
    """Raise unless ``transaction`` committed. psycopg leaves one whose connection broke
    without a word (it sends no COMMIT): in a batch, a write that failed on the broken
    connection had its error, and the writes before it would pass for kept."""
    status = getattr(transaction, "status", None)  # psycopg 3.3 and later
    if status is not None:
        if status is not Transaction.Status.COMMITTED:
            raise psycopg.OperationalError(
                f"the connection broke before the transaction committed ({status.value})"
            )
    elif transaction.connection.broken:  # psycopg 3.2: what skips the COMMIT
        raise psycopg.OperationalError("the connection broke before the transaction committed")


def _connect_again(pool: ConnectionPool[Connection]) -> None:
    """A round of attempts to connect failed: start another (``check`` grows a pool
    with no connection), so that a server back after any outage is used within the
    pause of a round (at most 2 s)."""
    if not pool.closed:
        pool.check()


class Connections(CommitHooks):
    def __init__(self, conninfo: str, schema: str, location: str) -> None:
        self.schema = schema
        self._conninfo = conninfo
        #: The server, database and schema (never the password): for logs and errors.
        self.location = location
        self._local = threading.local()
        self._idle_since: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        try:
            # A connection of its own first: a server that cannot be reached fails the
            # store now, with the server's reason (the pool would only time out).
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as db:
                self._configure(db)
                open_layout(db, schema, location)
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        self._pool: ConnectionPool[Connection] | None = None
        self._database: str | None = None
        self._pid = 0
        self._opening = threading.Lock()
        self._away = False  # the last wait for a connection was in vain

    def _connection(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection of this process's pool, made at the first call that needs one
        (constructing a store starts no thread) and again in a forked child (a
        connection is never shared across processes)."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            with self._opening:
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ConnectionPool(
                        self._conninfo,
                        min_size=1,
                        max_size=POOL_SIZE,
                        timeout=POOL_TIMEOUT,
                        reconnect_timeout=RECONNECT_TIMEOUT,
                        reconnect_failed=_connect_again,
                        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
                        configure=self._configure,
                        check=self._check,
                        reset=self._returned,
                        name=f"errands {self.location}",
                        open=True,
                    )
                    self._pid = os.getpid()
                pool = self._pool
        return pool.connection(timeout=AWAY_TIMEOUT if self._away else None)

    @contextlib.contextmanager
    def _lent(self) -> Iterator[Connection]:
        """A connection of the pool for a statement or a transaction. A batch that
        waited in vain for one fails its other writes at once (each would wait as
        long again: a batch of 50 requests' writes, over 4 minutes)."""
        failed: str | None = getattr(self._local, "failed", None)
        if failed is not None:
            raise PoolTimeout(failed)
        with contextlib.ExitStack() as stack:
            try:
                db = stack.enter_context(self._connection())
            except PoolTimeout as exc:
                self._away = True
                if getattr(self._local, "stack", None) is not None:
                    self._local.failed = str(exc)
                raise
            self._away = False
            yield db

    def _configure(self, db: Connection) -> None:
        db.execute("SELECT set_config('search_path', %s, false)", (self.schema,))
        self._returned(db)  # idle from now, until lent

    def _returned(self, db: Connection) -> None:
        self._idle_since[db] = time.monotonic()

    def _check(self, db: Connection) -> None:
        since = self._idle_since.pop(db, None)
        if since is not None and time.monotonic() - since > CHECK_AFTER_IDLE:
            ConnectionPool.check_connection(db)

    def _error(self, exc: psycopg.Error) -> StoreError:
        return store_error(exc, self.location)

    @mapped
    def database(self) -> str:
        """The name of the database the store is in (asked once)."""
        if self._database is None:
            with self._read() as db:
                row = db.execute("SELECT current_database()").fetchone()
            assert row is not None
            self._database = str(row[0])
        return self._database

    # -- reads and writes ---------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection to read on: the batch's, if this thread has begun one (it sees
        the batch's writes), else one borrowed from the pool for the statement."""
        batch: Connection | None = getattr(self._local, "batch", None)
        if batch is not None:
            yield batch
            return
        with self._lent() as db:
            yield db

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes of this thread (group commit).

        Inside it each write runs in a savepoint: a write that fails is undone alone.
        The transaction begins with the first write: a batch of idle polls (claims
        that find nothing due) only reads.
        """
        try:
            with self._after_batch():
                # Leaving the stack commits the batch's transaction (or rolls it back, on
                # an error) and gives its connection back.
                with contextlib.ExitStack() as stack:
                    self._local.stack = stack
                    self._local.batch = self._local.transaction = self._local.failed = None
                    try:
                        yield
                    finally:
                        begun: Transaction | None = self._local.transaction
                        self._local.stack = self._local.batch = None
                        self._local.transaction = self._local.failed = None
                if begun is not None:
                    committed(begun)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; nothing of it is kept if any statement fails."""
        stack: contextlib.ExitStack | None = getattr(self._local, "stack", None)
        if stack is None:
            with self._lent() as db:
                with db.transaction() as transaction:
                    yield db
                committed(transaction)
            return
        batch: Connection | None = self._local.batch
        if batch is None:
            batch = stack.enter_context(self._lent())
            self._local.transaction = stack.enter_context(batch.transaction())
            self._local.batch = batch
        with batch.transaction():  # a savepoint
            yield batch

    def close(self) -> None:
        with self._opening:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None
