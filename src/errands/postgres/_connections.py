"""The PostgreSQL store's connections and transactions, and the mapping of its errors.

Connections come from one bounded pool (``psycopg_pool``, opened by the first call that
needs it, in each process), in autocommit mode: a read is one statement on a connection
borrowed for it, a write is one transaction (or one statement, which is one), or, inside
``batch`` (group commit), a part of the batch's transaction, which keeps its connection
until it commits. Each connection's ``search_path`` is the store's schema alone, so
statements name their tables bare. No ``psycopg`` error leaves a method decorated with
``mapped``: it becomes the ``StoreError`` that ``_errors`` chooses.

Round trips are what a write costs here (each one a wake-up of the server's process and
of this thread), more than the statements themselves: a batch's savepoints are managed
by hand, one round trip a write (psycopg's nested transactions take two), and none for
the transaction's first write.
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
from psycopg.pq import TransactionStatus
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
#: Once a call has waited in vain (or the server dropped the connection it had), the
#: calls after it wait this long at most, until one gets a connection: through an
#: outage, the requests queued behind one that waited get their ``503`` sooner. It
#: is longer than the pool's pauses between attempts to connect (2.3 s at most, see
#: RECONNECT_TIMEOUT), so that a call made as the server comes back still gets the
#: connection the next attempt makes.
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

#: A write's savepoint in a batch (the same name for each: one at a time).
SAVEPOINT = "SAVEPOINT errands_write"
NEXT_SAVEPOINT = "RELEASE SAVEPOINT errands_write; SAVEPOINT errands_write"
UNDO_WRITE = "ROLLBACK TO SAVEPOINT errands_write"


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

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A connection of this process's pool, made at the first call that needs one
        (constructing a store starts no thread) and again in a forked child (a
        connection is never shared across processes)."""
        timeout = AWAY_TIMEOUT if self._away else None
        with self._pool_now().connection(timeout=timeout) as db:
            try:
                yield db
            finally:
                # Idle from now. (Not the pool's reset hook: with one, the pool hands
                # every connection given back to a thread of its own, a wake-up a call.)
                self._returned(db)

    def _pool_now(self) -> ConnectionPool[Connection]:
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
                        name=f"errands {self.location}",
                        open=True,
                    )
                    self._pid = os.getpid()
                pool = self._pool
        return pool

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
            try:
                yield db
            finally:
                if db.broken:  # the server dropped it: as much a sign it is away
                    self._away = True

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
        """A connection to read on: the batch's, if this thread is in one (it sees the
        batch's writes, and the writes after the read take the same connection), else
        one borrowed from the pool for the statement."""
        stack: contextlib.ExitStack | None = getattr(self._local, "stack", None)
        if stack is None:
            with self._lent() as db:
                yield db
            return
        yield self._batch_connection(stack)

    def _batch_connection(self, stack: contextlib.ExitStack) -> Connection:
        batch: Connection | None = self._local.batch
        if batch is None:
            # Given back to the pool when the batch ends.
            batch = self._local.batch = stack.enter_context(self._lent())
        return batch

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes of this thread (group commit).

        Each write but the transaction's first runs in a savepoint: a write that fails
        is undone alone (the first one by rolling back the transaction, which holds
        nothing else yet: a batch of one write pays no savepoint). The transaction
        begins with the first write: a batch of idle polls (claims that find nothing
        due) only reads.
        """
        try:
            # Leaving the stack gives the batch's connection back.
            with self._after_batch(), contextlib.ExitStack() as stack:
                self._local.stack = stack
                self._local.batch = self._local.failed = None
                self._local.savepoint = False
                self._local.first = True
                self._local.kept = False  # a write of the batch went through
                try:
                    yield
                    self._commit_batch()
                except BaseException:
                    self._roll_back_batch()
                    raise
                finally:
                    self._local.stack = self._local.batch = self._local.failed = None
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _commit_batch(self) -> None:
        batch: Connection | None = self._local.batch
        if batch is None:
            return
        if not self._local.kept:  # each write failed, and its caller was told: none to keep
            self._roll_back_batch()
            return
        if batch.broken:  # (what psycopg's own transactions would skip the COMMIT of)
            raise psycopg.OperationalError("the connection broke before the batch committed")
        status = batch.info.transaction_status
        if status == TransactionStatus.INTRANS:
            batch.execute("COMMIT")
        elif status != TransactionStatus.IDLE:
            # A read of the batch failed in its transaction: PostgreSQL would take the
            # COMMIT for a ROLLBACK, and the writes before it are not kept.
            raise psycopg.errors.InFailedSqlTransaction(
                "a statement of the batch failed outside a savepoint: nothing of it was kept"
            )

    def _roll_back_batch(self) -> None:
        batch: Connection | None = self._local.batch
        if batch is not None and batch.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):  # (a broken connection: the pool drops it)
                batch.execute("ROLLBACK")

    @contextlib.contextmanager
    def _write(self, *, one_statement: bool = False, alone: bool = False) -> Iterator[Connection]:
        """One write transaction; nothing of it is kept if any statement fails.

        A write of ``one_statement`` takes no ``BEGIN`` and ``COMMIT`` outside a batch:
        the statement is a transaction by itself, one round trip. Nor, if it may commit
        ``alone``, as a batch's first write (a claim woken by a notification, alone in
        its batch, pays two round trips with its look, not five); the writes after it
        in the batch share a transaction. A write whose caller must learn that nothing
        of it was kept when its batch fails (a request's) is never ``alone``.
        """
        stack: contextlib.ExitStack | None = getattr(self._local, "stack", None)
        if stack is None:
            with self._lent() as db:
                if one_statement:
                    yield db
                else:
                    with db.transaction() as transaction:
                        yield db
                    committed(transaction)
            return
        batch = self._batch_connection(stack)
        first, self._local.first = self._local.first, False
        status = batch.info.transaction_status
        if one_statement and alone and first and status == TransactionStatus.IDLE:
            yield batch
            self._local.kept = True
            return
        if status == TransactionStatus.IDLE:
            batch.execute("BEGIN")
            self._local.savepoint = protected = False
        elif status == TransactionStatus.INTRANS:
            # One round trip: the last write's savepoint is not needed any more.
            batch.execute(NEXT_SAVEPOINT if self._local.savepoint else SAVEPOINT)
            self._local.savepoint = protected = True
        elif batch.broken:  # the server went away: so did the batch
            raise psycopg.OperationalError("the connection broke before the batch committed")
        else:  # the batch is lost already (see _commit_batch): so would this write be
            raise psycopg.errors.InFailedSqlTransaction(
                "a statement of the batch failed outside a savepoint"
            )
        try:
            yield batch
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # (a broken connection: the commit fails)
                batch.execute(UNDO_WRITE if protected else "ROLLBACK")
            raise
        self._local.kept = True

    def close(self) -> None:
        with self._opening:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None
