"""Jobs in the user's transaction (``add_task_in``, ``add_task_in_async``) on PostgreSQL:
a rollback leaves no job, a commit always has its job, and no worker starts it before
the commit; on psycopg and SQLAlchemy connections, sync and async."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from errands import ConfigurationError, Errands, InvalidArguments, JobStatus, StoreError
from errands.postgres import parse_url
from tests.conftest import POSTGRES_ADMIN, postgres_url, wait_finished

pytestmark = pytest.mark.postgres

RAN: list[int] = []


@pytest.fixture
def url(postgres_database: str) -> str:
    return postgres_url(postgres_database)


@pytest.fixture
def conninfo(url: str) -> str:
    return parse_url(url)[0]


@pytest.fixture
def app(url: str) -> Iterator[tuple[Errands, Any]]:
    """An Errands instance on the run's database and its task ``receipt``."""
    errands = Errands(url)

    @errands.task
    def receipt(order_id: int) -> int:
        RAN.append(order_id)
        return order_id

    yield errands, receipt
    errands._core.backend.store.close()  # type: ignore[attr-defined]


def ids(errands: Errands) -> list[str]:
    return [record.id for record in errands.jobs()]


def sa_url(conninfo: str) -> str:
    dsn = psycopg.conninfo.conninfo_to_dict(conninfo)
    return f"postgresql+psycopg://{dsn.get('user', 'postgres')}@127.0.0.1:5432/{dsn['dbname']}"


# -- rollback leaves no job; commit has its job ---------------------------------------


def test_psycopg_rollback_leaves_no_job_and_commit_keeps_it(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    with psycopg.connect(conninfo) as conn:
        dropped = errands.add_task_in(conn, receipt, 1)
        assert dropped.created
        conn.rollback()
        kept = errands.add_task_in(conn.cursor(), receipt, 2)
        assert errands.get(kept.id) is None  # not visible before the commit
        conn.commit()
    assert errands.get(dropped.id) is None
    record = errands.get(kept.id)
    assert record is not None and record.status is JobStatus.QUEUED
    assert record.args == [2] and record.owner is None


def test_psycopg_in_an_autocommit_transaction_block(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match="autocommit"):
            errands.add_task_in(conn, receipt, 1)
        with pytest.raises(ZeroDivisionError), conn.transaction():
            gone = errands.add_task_in(conn, receipt, 1)
            1 / 0  # noqa: B018
        with conn.transaction():
            kept = errands.add_task_in(conn, receipt, 2)
    assert errands.get(gone.id) is None
    assert errands.get(kept.id) is not None


def test_sqlalchemy_connection_and_session(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    engine = sa.create_engine(sa_url(conninfo))
    try:
        with engine.connect() as conn:
            dropped = errands.add_task_in(conn, receipt, 1)
            conn.rollback()
            kept = errands.add_task_in(conn, receipt, 2)
            conn.commit()
        with Session(engine) as session:
            session_dropped = errands.add_task_in(session, receipt, 3)
            session.rollback()
            with session.begin():
                session_kept = errands.add_task_in(session, receipt, 4)
        with pytest.raises(RuntimeError), engine.begin() as conn:
            in_begin = errands.add_task_in(conn, receipt, 5)
            raise RuntimeError
    finally:
        engine.dispose()
    assert errands.get(dropped.id) is None and errands.get(session_dropped.id) is None
    assert errands.get(in_begin.id) is None
    assert errands.get(kept.id) is not None and errands.get(session_kept.id) is not None


@pytest.mark.anyio
async def test_async_forms(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        dropped = await errands.add_task_in_async(conn, receipt, 1)
        await conn.rollback()
        kept = await errands.add_task_in_async(conn.cursor(), receipt, 2)
        await conn.commit()
    engine = create_async_engine(sa_url(conninfo))
    try:
        async with engine.connect() as aconn:
            sa_dropped = await errands.add_task_in_async(aconn, receipt, 3)
            await aconn.rollback()
            sa_kept = await errands.add_task_in_async(aconn, receipt, 4)
            await aconn.commit()
        async with AsyncSession(engine) as session:
            session_dropped = await errands.add_task_in_async(session, receipt, 5)
            await session.rollback()
            async with session.begin():
                session_kept = await errands.add_task_in_async(session, receipt, 6)
    finally:
        await engine.dispose()
    for job in (dropped, sa_dropped, session_dropped):
        assert errands.get(job.id) is None
    for job in (kept, sa_kept, session_kept):
        assert errands.get(job.id) is not None


# -- a worker runs it, never before the commit ------------------------------------------


@pytest.mark.anyio
async def test_a_job_never_starts_before_its_commit_and_runs_promptly_after(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    RAN.clear()
    async with errands.lifespan():
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await conn.execute("SELECT 1")  # the transaction is open
            job = await errands.add_task_in_async(conn, receipt, 42)
            await anyio.sleep(1.0)  # the worker runs meanwhile
            assert RAN == []
            assert await anyio.to_thread.run_sync(errands.get, job.id) is None
            await conn.commit()
            committed = time.monotonic()
        record = await job.wait(timeout=10)
        took = time.monotonic() - committed
    assert record.status is JobStatus.SUCCEEDED and record.result == 42
    assert RAN == [42]
    # Woken by the commit's NOTIFY, not a later poll (idle polls are 0.2 s apart).
    assert took < 1.0


def test_workers_are_notified_at_the_commit_only(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    schema = errands._core.backend.store.schema  # type: ignore[attr-defined]
    with psycopg.connect(conninfo, autocommit=True) as listener, psycopg.connect(conninfo) as conn:
        listener.execute(f"LISTEN errands_{schema}")
        errands.add_task_in(conn, receipt, 1)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        conn.commit()
        heard = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in heard] == [f"errands_{schema}"]
        errands.add_task_in(conn, receipt, 2)
        conn.rollback()
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


@pytest.mark.anyio
async def test_many_commits_each_have_their_job_and_rollbacks_none(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    RAN.clear()
    kept, dropped = [], []
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        for n in range(40):
            job = await errands.add_task_in_async(conn, receipt, n)
            if n % 2:
                await conn.rollback()
                dropped.append(job.id)
            else:
                await conn.commit()
                kept.append(job.id)
    await errands.join(timeout=30)
    assert sorted(RAN) == list(range(0, 40, 2))
    for id in kept:
        record = errands.get(id)
        assert record is not None and record.status is JobStatus.SUCCEEDED
    assert all(errands.get(id) is None for id in dropped)


def test_job_id_is_kept_once_inside_a_transaction(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    once = receipt.options(job_id="receipt-7")
    with psycopg.connect(conninfo) as conn:
        first = errands.add_task_in(conn, once, 7)
        second = errands.add_task_in(conn, once, 7)
        conn.commit()
        third = errands.add_task_in(conn, once, 7)
        conn.commit()
    assert first.created and not second.created and not third.created
    assert first.id == second.id == "receipt-7"
    assert ids(errands) == ["receipt-7"]


def test_a_job_id_racing_another_transaction_is_added_once(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    """The second insert of an id waits for the first transaction: if it rolls back,
    the second adds the job; if it commits, the second adds nothing."""
    errands, receipt = app
    once = receipt.options(job_id="race")
    with psycopg.connect(conninfo) as first, psycopg.connect(conninfo) as second:
        assert errands.add_task_in(first, once, 1).created
        done: list[bool] = []
        racer = threading.Thread(
            target=lambda: done.append(errands.add_task_in(second, once, 2).created)
        )
        racer.start()
        time.sleep(0.3)
        assert done == []  # waiting on the first transaction's row
        first.rollback()
        racer.join(10)
        assert done == [True]
        second.commit()
        assert not errands.add_task_in(first, once, 3).created
        first.commit()
    record = errands.get("race")
    assert record is not None and record.args == [2]


def test_a_delay_and_the_arguments_are_checked_as_add_task_does(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    with psycopg.connect(conninfo) as conn:
        with pytest.raises(InvalidArguments):
            errands.add_task_in(conn, receipt, 1, 2)  # type: ignore[call-arg]
        later = errands.add_task_in(conn, receipt.options(delay=60), 1)
        conn.commit()
    record = errands.get(later.id)
    assert record is not None and record.scheduled_at is not None
    assert record.run_at is not None and record.run_at >= record.scheduled_at


# -- what it refuses --------------------------------------------------------------------


def test_a_store_not_on_postgresql_is_refused(tmp_path: Path, conninfo: str) -> None:
    errands = Errands(f"sqlite:///{tmp_path}/e.db")

    @errands.task
    def receipt(order_id: int) -> None: ...

    with psycopg.connect(conninfo) as conn, pytest.raises(ConfigurationError, match="PostgreSQL"):
        errands.add_task_in(conn, receipt, 1)


def test_unknown_closed_and_mismatched_connections_are_refused(
    app: tuple[Errands, Any], conninfo: str
) -> None:
    errands, receipt = app
    import sqlite3

    with pytest.raises(ConfigurationError, match="psycopg 3 Connection"):
        errands.add_task_in(sqlite3.connect(":memory:"), receipt, 1)
    with pytest.raises(ConfigurationError, match="add_task_in_async"):
        errands.add_task_in(object.__new__(psycopg.AsyncConnection), receipt, 1)
    with pytest.raises(ConfigurationError, match="registered"):
        errands.add_task_in(object(), print, 1)  # type: ignore[arg-type]
    conn = psycopg.connect(conninfo)
    conn.close()
    with pytest.raises(StoreError, match="closed"):
        errands.add_task_in(conn, receipt, 1)
    postgres = sa.create_engine(sa_url(conninfo))
    try:
        with postgres.connect() as auto:
            auto = auto.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(ConfigurationError, match="autocommit"):
                errands.add_task_in(auto, receipt, 1)
    finally:
        postgres.dispose()
    assert ids(errands) == []
    engine = sa.create_engine("sqlite://")
    with engine.connect() as lite, pytest.raises(ConfigurationError, match="psycopg driver"):
        errands.add_task_in(lite, receipt, 1)
    # A connection to another database: refused before anything is written.
    with psycopg.connect(POSTGRES_ADMIN) as other:
        with pytest.raises(ConfigurationError, match="database 'postgres'"):
            errands.add_task_in(other, receipt, 1)
        assert other.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS


def test_a_failed_transaction_is_refused(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    with psycopg.connect(conninfo) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(StoreError, match="failed already"):
            errands.add_task_in(conn, receipt, 1)


def test_waiting_on_a_committed_job(app: tuple[Errands, Any], conninfo: str) -> None:
    errands, receipt = app
    with psycopg.connect(conninfo) as conn:
        job = errands.add_task_in(conn, receipt, 9)
        conn.commit()
    anyio.run(errands.join)
    assert wait_finished(errands, job.id).result == 9
