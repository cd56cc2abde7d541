"""The SQLite store through the whole stack: requests, worker, other instances."""

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from errands import BackgroundTasks, ConfigurationError, Errands, JobStatus
from errands.sqlite import SQLiteStore


def make_app(errands: Errands, ran: list[str]) -> FastAPI:
    @errands.task(name="greet", retries=1, backoff=0)
    def greet(name: str) -> str:
        ran.append(name)
        if len(ran) == 1:
            raise ConnectionError("first attempt fails")
        return f"hello {name}"

    app = FastAPI(lifespan=errands.lifespan)

    @app.post("/greet/{name}")
    async def endpoint(name: str, tasks: BackgroundTasks) -> str:
        job = tasks.add_task(greet, name)
        if name == "boom":
            raise HTTPException(500)
        return job.id

    return app


def test_a_request_stores_a_durable_job_that_other_processes_can_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    errands, ran = Errands(url), []
    app = make_app(errands, ran)
    with TestClient(app) as client:
        job_id = client.post("/greet/ada").json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            record = errands.get(job_id)
            if record is not None and record.finished:
                break
            time.sleep(0.02)
    other = Errands(url)  # another instance on the same file: no lifespan, no worker
    record = other.get(job_id)
    assert record is not None and record.durable
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
    assert record.result == "hello ada" and record.error == "ConnectionError: first attempt fails"
    assert ran == ["ada", "ada"]


def test_jobs_of_an_endpoint_that_raises_never_reach_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url)
    with TestClient(make_app(errands, [])) as client:
        assert client.post("/greet/boom").status_code == 500
    assert Errands(url).jobs() == []


def test_without_a_worker_here_jobs_wait_in_the_file_for_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    errands, ran = Errands(url), []
    app = make_app(errands, ran)
    job_id = TestClient(app).post("/greet/grace").json()  # no lifespan: no worker here
    record = errands.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED and ran == []

    import asyncio

    asyncio.run(errands.join(timeout=10))  # a worker comes along
    record = errands.get(job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///jobs.db?mode=ro"])
def test_bad_sqlite_urls_say_how_to_write_them(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:///jobs\.db"):
        Errands(url)


def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Errands("sqlite:///rel.db")._core.backend.store
    assert isinstance(relative, SQLiteStore) and relative.path == "rel.db"
    assert (tmp_path / "rel.db").exists()
    absolute = Errands(f"sqlite:///{tmp_path}/abs.db")._core.backend.store
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/abs.db"
    relative.close()
    absolute.close()


def test_arguments_over_max_payload_are_refused_in_add_task(tmp_path: Path) -> None:
    from errands import PayloadTooLarge

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db", max_payload=1000)

    @errands.task(name="upload")
    def upload(blob: str) -> None: ...

    errands.add_task(upload, "x" * 900)
    with pytest.raises(PayloadTooLarge, match=r"'upload'.*1,1\d\d bytes.*max_payload=1,000"):
        errands.add_task(upload, "x" * 1100)
    assert len(errands.jobs()) == 1


def test_a_full_disk_fails_add_task_clearly_and_keeps_nothing_half_written(
    tmp_path: Path,
) -> None:
    from errands import StoreError

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")

    @errands.task(name="fill")
    def fill(blob: str) -> None: ...

    store = errands._core.backend.store
    assert isinstance(store, SQLiteStore)
    # SQLite's own "database or disk is full", from a page budget on this connection.
    pages = store._db().execute("PRAGMA page_count").fetchone()[0]
    store._db().execute(f"PRAGMA max_page_count = {pages + 8}")
    added = 0
    with pytest.raises(StoreError, match=r"disk is full.*Nothing of this call was stored"):
        for _ in range(1000):
            errands.add_task(fill, "y" * 4000)
            added += 1
    assert len(errands.jobs(limit=10_000)) == added  # the failing one left no trace


def test_a_request_whose_jobs_cannot_be_stored_fails(tmp_path: Path) -> None:
    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")
    app = make_app(errands, [])
    store = errands._core.backend.store
    assert isinstance(store, SQLiteStore)
    # From here on the file cannot be opened: every write fails (the worker's too).
    store.path = str(tmp_path / "missing-dir" / "jobs.db")
    store.close()
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/greet/ada")
    # The lifespan's default handler: try again later, and no file path leaks out.
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert str(tmp_path) not in response.text


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_worker_purges_jobs_past_the_retention_time(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import asyncio

    from errands.local import _backend
    from tests.conftest import postgres_url

    monkeypatch.setattr(_backend, "PURGE_EVERY", 0.05)
    url = (
        postgres_url(request.getfixturevalue("postgres_database"))
        if store == "postgres"
        else f"sqlite:///{tmp_path}/jobs.db"
    )
    errands = Errands(url, retention=0.2)

    @errands.task(name="quick")
    def quick() -> None: ...

    async def main() -> None:
        job = errands.add_task(quick)
        async with errands.lifespan():
            await job.wait(timeout=5)
            assert errands.get(job.id) is not None
            for _ in range(200):
                if errands.get(job.id) is None:
                    break
                await asyncio.sleep(0.02)
        assert errands.get(job.id) is None

    asyncio.run(main())


def test_worker_false_starts_no_worker_jobs_wait_for_one_elsewhere(tmp_path: Path) -> None:
    errands, ran = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False), []
    app = make_app(errands, ran)
    with TestClient(app) as client:
        job_id = client.post("/greet/ada").json()
        time.sleep(0.2)
        assert errands._core.worker is None
        assert errands.get(job_id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert ran == []


def test_the_default_store_is_a_sqlite_file_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERRANDS_URL", raising=False)
    errands = Errands()
    assert errands.url == "sqlite:///errands.db" and errands._core.backend.store.durable
    assert (tmp_path / "errands.db").exists()
    errands._core.backend.store.close()


def test_concurrent_requests_share_transactions_and_one_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    import asyncio
    import dataclasses

    from errands import StoreError

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")

    @errands.task(name="t")
    def t(i: int) -> None: ...

    store = errands._core.backend.store
    assert isinstance(store, SQLiteStore)
    transactions: list[int] = []
    batch = store.batch

    def counting() -> Any:
        transactions.append(1)
        return batch()

    store.batch = counting  # type: ignore[method-assign]
    core = errands._core
    records = [core.new_record(t, (i,), {}) for i in range(200)]

    async def main() -> list[BaseException | None]:
        await core.backend.commit([records[0]])
        bad = dataclasses.replace(records[1], id="bad", name=None)  # NOT NULL: refused
        results = await asyncio.gather(
            *(core.backend.commit([r]) for r in [*records[1:100], bad, *records[100:]]),
            return_exceptions=True,
        )
        return list(results)

    results = asyncio.run(main())
    failures = [r for r in results if not isinstance(r, list)]
    assert len(failures) == 1 and isinstance(failures[0], StoreError)
    assert all(r == [] for r in results if isinstance(r, list))  # each kept its jobs
    assert len(store.jobs(limit=1000)) == 200
    assert 1 < len(transactions) < 100  # requests were written together


def test_jobs_claimed_while_the_worker_stops_are_given_back(tmp_path: Path) -> None:
    import asyncio
    import threading

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db")

    @errands.task(name="quick")
    def quick() -> None: ...

    store = errands._core.backend.store
    claim, writing, finish = store.claim, threading.Event(), threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        finish.wait(5)  # the claim is still being written when the worker stops
        return claim(*args, **kwargs)

    job = errands.add_task(quick)

    async def main() -> None:
        store.claim = slow_claim  # type: ignore[method-assign]
        async with errands.lifespan():
            await asyncio.to_thread(writing.wait, 5)
            asyncio.get_running_loop().call_later(0.2, finish.set)
        # The lifespan has ended: the claimed job went back, untouched.

    asyncio.run(main())
    record = errands.get(job.id)
    assert record is not None and record.status is JobStatus.QUEUED
    assert record.attempts == 0 and record.owner is None


def test_jobs_that_fail_are_never_reported_as_having_lost_their_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db", lease=0.15)  # renewed every 50 ms

    @errands.task(name="fails", retries=1, backoff=0)
    async def fails(i: int) -> None:
        await asyncio.sleep(0.045 + i * 0.001)  # ends around a renewal
        raise ValueError("no")

    async def main() -> None:
        async with errands.lifespan():
            for i in range(30):
                errands.add_task(fails, i)
            await errands.join(timeout=20)

    asyncio.run(main())
    assert errands._core.backend.store.counts()[JobStatus.FAILED] == 30
    assert "lost its lease" not in caplog.text


def test_a_result_the_store_refuses_for_a_while_is_kept_then_and_the_task_never_runs_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db", lease=1.0)
    runs: list[int] = []

    @errands.task(name="report")
    def report(i: int) -> str:
        runs.append(i)
        return "r" * 3000  # a page of its own: writing it needs room

    store = errands._core.backend.store
    assert isinstance(store, SQLiteStore)

    def limit(pages: int | None) -> None:
        # On the group commit's own connection: its writes see a full disk.
        db = store._db()
        count = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {count + 2 if pages is None else pages}")

    async def main() -> None:
        jobs = [errands.add_task(report, i) for i in range(10)]
        caplog.set_level(logging.INFO, "errands")
        async with errands.lifespan():
            await errands._core.backend.write(lambda: limit(None))
            for _ in range(400):  # the results cannot be kept: the store says the disk is full
                if "disk is full" in caplog.text:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(2.5)  # more than two leases: they must not be taken away
            await errands._core.backend.write(lambda: limit(1_000_000_000))
            for job in jobs:
                assert (await job.wait(timeout=20)).status is JobStatus.SUCCEEDED

    asyncio.run(main())
    assert sorted(runs) == list(range(10))  # each task ran once, full disk or not
    assert "recording job outcomes failed" in caplog.text and "works again" in caplog.text
    assert caplog.text.count("trying again in") < 40  # once a step, not once a try


def test_a_request_on_a_store_no_worker_ever_ran_on_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    errands, ran = Errands(f"sqlite:///{tmp_path}/jobs.db"), []
    app = make_app(errands, ran)
    caplog.set_level(logging.WARNING, "errands")
    client = TestClient(app)  # no lifespan: no worker in this process
    for name in ("ada", "bob"):
        assert client.post(f"/greet/{name}").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "no worker" in r.getMessage()]
    assert len(warnings) == 1
    assert "lifespan=errands.lifespan" in warnings[0] and "errands worker" in warnings[0]
    assert str(tmp_path) in warnings[0]


def test_a_request_on_a_store_a_worker_has_run_on_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    url = f"sqlite:///{tmp_path}/jobs.db"
    asyncio.run(Errands(url).join(timeout=5))  # a worker ran on this file once
    errands, ran = Errands(url), []
    caplog.set_level(logging.WARNING, "errands")
    assert TestClient(make_app(errands, ran)).post("/greet/ada").status_code == 200
    assert "no worker" not in caplog.text


def test_many_short_event_loops_leave_no_threads_or_connections_behind(tmp_path: Path) -> None:
    import gc
    import os
    import threading

    errands, ran = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False), []
    client = TestClient(make_app(errands, ran))  # no lifespan: a new event loop a request
    client.post("/greet/first")
    gc.collect()
    threads, files = threading.active_count(), len(os.listdir("/proc/self/fd"))
    for i in range(60):
        assert client.post(f"/greet/{i}").status_code == 200
    # A leak would be one a loop (60), and stay; a loop's commit thread that has not
    # quite ended yet, with its connection's three files, is not one (a busy machine
    # shows a few): they are given a few seconds to go.
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        settled = threading.active_count() <= threads + 3
        settled = settled and len(os.listdir("/proc/self/fd")) <= files + 10
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert threading.active_count() <= threads + 3
    assert len(os.listdir("/proc/self/fd")) <= files + 10
