"""Jobs in the user's transaction (``Errands.add_task_in``, ``add_task_in_async``).

The job's row is written with the store's own insert (``INSERT_NEW``'s columns, an id
already kept adds nothing) on the caller's connection, inside the caller's
transaction, followed by a ``NOTIFY`` on the store's channel in the same statement.
Both are transactional in PostgreSQL: the row is seen, and the listening workers are
woken, only when that transaction commits; a rollback leaves no job. The job is
released at once (no ``owner``, no ``hold``): until the commit no other session sees
the row, so no worker can claim it earlier.

Connections taken: psycopg 3's ``Connection`` and ``Cursor`` (sync), ``AsyncConnection``
and ``AsyncCursor`` (async); SQLAlchemy's ``Connection`` and ``Session`` (sync),
``AsyncConnection`` and ``AsyncSession`` (async), on the psycopg driver
(``postgresql+psycopg://``). SQLAlchemy is never imported here: an object is taken for
one of its classes only if the caller has imported SQLAlchemy already.

The caller's connection must be on the store's database: each call compares
``current_database()`` with the store's (one statement, before the insert), so a
connection to another database is refused before anything is written. (Two servers
with a database of the same name are not told apart: that is the URL's to get right.)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from .._record import JobRecord
from ..exceptions import ConfigurationError, StoreError
from ._listen import channel
from ._schema import insert_sql, new_row

if TYPE_CHECKING:
    from ._connections import Connections

DATABASE = "SELECT current_database()"

SUPPORTED = (
    "a psycopg 3 Connection or Cursor, or a SQLAlchemy Connection or Session on the "
    "psycopg driver (postgresql+psycopg://)"
)
SUPPORTED_ASYNC = (
    "a psycopg 3 AsyncConnection or AsyncCursor, or a SQLAlchemy AsyncConnection or "
    "AsyncSession on the psycopg driver (postgresql+psycopg://)"
)


def _sqlalchemy() -> Any:
    """SQLAlchemy's module, if the caller imported it (else None: no object can be one
    of its classes)."""
    return sys.modules.get("sqlalchemy")


def _check_dialect(dialect: Any, async_: bool) -> None:
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        url = "postgresql+psycopg://" if not async_ else "postgresql+psycopg:// (async)"
        raise ConfigurationError(
            f"add_task_in{'_async' if async_ else ''} takes SQLAlchemy connections on the "
            f"psycopg driver only, got {dialect.name}+{dialect.driver}: make the engine "
            f"with a {url} URL"
        )


def _check_psycopg(conn: Any) -> None:
    """Refuse a closed connection, a failed transaction, and autocommit with no
    transaction open (``conn``: psycopg's, or the one under SQLAlchemy's)."""
    if conn.closed:
        raise StoreError(
            "add_task_in: the connection is closed; add the job on the open connection "
            "of the transaction it belongs to"
        )
    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise StoreError(
            "add_task_in: the connection's transaction has failed already (a statement "
            "before raised); roll it back: no job is added to it"
        )
    if conn.autocommit and status == TransactionStatus.IDLE:
        raise ConfigurationError(
            "add_task_in: the connection is in autocommit mode with no transaction open, "
            "so the job would not be part of any; call it inside `with conn.transaction():` "
            "(or use a connection without autocommit)"
        )


def _failed(exc: BaseException) -> StoreError:
    return StoreError(
        f"add_task_in: your connection failed to add the job ({type(exc).__name__}: "
        f"{str(exc).strip()}); your transaction may have to be rolled back"
    )


class Writer:
    """What both forms share: the store, the record, the statements."""

    def __init__(self, store: Connections, record: JobRecord) -> None:
        self.store = store
        self.record = record
        self.insert = insert_sql(store.schema)
        self.params = (*new_row(record), channel(store.schema))

    def check_database(self, found: object) -> None:
        wanted = self.store.database()
        if found != wanted:
            raise ConfigurationError(
                f"add_task_in: your connection is on database {found!r}, and this "
                f"Errands instance's store on {wanted!r} ({self.store.location}); the job "
                f"is only part of your transaction in the same database: give Errands a "
                f"URL of your database (postgresql://.../{found}), or use add_task"
            )

    # -- sync ---------------------------------------------------------------------

    def write(self, conn: object) -> bool:
        """Write the job on ``conn``; whether it was added (not an id kept already)."""
        if isinstance(conn, psycopg.Cursor):
            conn = conn.connection
        if isinstance(conn, psycopg.Connection):
            _check_psycopg(conn)
            try:
                with conn.cursor(row_factory=tuple_row) as cursor:
                    found = cursor.execute(DATABASE).fetchone()
                    self.check_database(found[0] if found else None)
                    return cursor.execute(self.insert, self.params).fetchone() is not None
            except psycopg.Error as exc:
                raise _failed(exc) from exc
        sa = _sqlalchemy()
        if sa is not None:
            import sqlalchemy.orm

            if isinstance(conn, sqlalchemy.orm.Session):
                conn = conn.connection()  # begins the session's transaction if need be
            if isinstance(conn, sa.engine.Connection):
                _check_dialect(conn.dialect, False)
                if conn.closed:
                    raise StoreError("add_task_in: the SQLAlchemy Connection is closed")
                _check_psycopg(conn.connection.driver_connection)
                try:
                    self.check_database(conn.exec_driver_sql(DATABASE).scalar())
                    return conn.exec_driver_sql(self.insert, self.params).first() is not None
                except sa.exc.DBAPIError as exc:
                    raise _failed(exc) from exc
            async_classes = self._async_sqlalchemy()
        else:
            async_classes = ()
        if isinstance(conn, (psycopg.AsyncConnection, psycopg.AsyncCursor, *async_classes)):
            raise ConfigurationError(
                f"add_task_in takes a sync connection, got {type(conn).__name__}: "
                f"use `await errands.add_task_in_async(conn, ...)`"
            )
        raise ConfigurationError(
            f"add_task_in takes {SUPPORTED}, got {type(conn).__module__}.{type(conn).__qualname__}"
        )

    # -- async --------------------------------------------------------------------

    async def write_async(self, conn: object) -> bool:
        await anyio.to_thread.run_sync(self.store.database)  # (asked once: off the loop)
        if isinstance(conn, psycopg.AsyncCursor):
            conn = conn.connection
        if isinstance(conn, psycopg.AsyncConnection):
            _check_psycopg(conn)
            try:
                async with conn.cursor(row_factory=tuple_row) as cursor:
                    found = await (await cursor.execute(DATABASE)).fetchone()
                    self.check_database(found[0] if found else None)
                    await cursor.execute(self.insert, self.params)
                    return await cursor.fetchone() is not None
            except psycopg.Error as exc:
                raise _failed(exc) from exc
        sa = _sqlalchemy()
        if sa is not None:
            from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

            if isinstance(conn, AsyncSession):
                conn = await conn.connection()
            if isinstance(conn, AsyncConnection):
                _check_dialect(conn.dialect, True)
                if conn.closed:
                    raise StoreError("add_task_in_async: the SQLAlchemy AsyncConnection is closed")
                raw = await conn.get_raw_connection()
                _check_psycopg(raw.driver_connection)
                try:
                    result = await conn.exec_driver_sql(DATABASE)
                    self.check_database(result.scalar())
                    result = await conn.exec_driver_sql(self.insert, self.params)
                    return result.first() is not None
                except sa.exc.DBAPIError as exc:
                    raise _failed(exc) from exc
            import sqlalchemy.orm

            sync_classes: tuple[type, ...] = (sa.engine.Connection, sqlalchemy.orm.Session)
        else:
            sync_classes = ()
        if isinstance(conn, (psycopg.Connection, psycopg.Cursor, *sync_classes)):
            raise ConfigurationError(
                f"add_task_in_async takes an async connection, got {type(conn).__name__}: "
                f"use `errands.add_task_in(conn, ...)`"
            )
        raise ConfigurationError(
            f"add_task_in_async takes {SUPPORTED_ASYNC}, got {type(conn).__module__}."
            f"{type(conn).__qualname__}"
        )

    @staticmethod
    def _async_sqlalchemy() -> tuple[type, ...]:
        try:
            from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
        except ImportError:  # (its async extension needs greenlet)
            return ()
        return (AsyncConnection, AsyncSession)
