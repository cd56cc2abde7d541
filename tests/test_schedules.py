"""Schedules: @errands.cron and @errands.every, their ticks, their bad input, and one
job per tick however many processes keep them."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import ConfigurationError, Errands, JobStatus
from errands._schedule import Schedule
from tests.apps import modes
from tests.conftest import (
    ROOT,
    CeleryWorker,
    Server,
    delete_queues,
    postgres_url,
    require_service,
    wait_until,
)


def schedule(errands: Errands, **when: object) -> Schedule:
    @errands.task(name="job")
    def job() -> None: ...

    return Schedule(job, **when)  # type: ignore[arg-type]


def test_cron_ticks_are_those_of_the_expression_in_its_time_zone() -> None:
    paris = schedule(Errands("memory://"), cron="0 3 * * *", tz=ZoneInfo("Europe/Paris"))
    # 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC in summer.
    winter = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert paris.after(winter) == datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    assert paris.latest(winter) == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 1, 0, 30, tzinfo=UTC)
    assert paris.after(summer) == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
    tick = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert paris.latest(tick) == tick and paris.after(tick) == tick + timedelta(days=1)
    assert paris.job_id(tick) == "cron:job:2026-12-01T02:00:00Z"


def test_interval_ticks_are_multiples_of_it_since_the_epoch() -> None:
    every = schedule(Errands("memory://"), interval=300.0)
    moment = datetime(2026, 12, 1, 12, 7, 30, tzinfo=UTC)
    assert every.latest(moment) == datetime(2026, 12, 1, 12, 5, tzinfo=UTC)
    assert every.after(moment) == datetime(2026, 12, 1, 12, 10, tzinfo=UTC)
    assert every.job_id(every.after(moment)) == "cron:job:2026-12-01T12:10:00Z"
    half = schedule(Errands("memory://"), interval=1.5)
    assert half.job_id(datetime(2026, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)).endswith("T00:00:01.500Z")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda e: e.cron("0 3 * * * *"), "has 6 field(s); give five: minute hour"),
        (
            lambda e: e.cron("61 3 * * *"),
            "is not valid, or names a day that never comes (cronsim: Bad minute)",
        ),
        (lambda e: e.cron("every day"), "has 2 field(s)"),
        (lambda e: e.cron(5), "a cron expression is a str, got 5"),
        (lambda e: e.cron("0 3 * * *", tz="Mars/Olympus"), "no time zone this machine knows"),
        (lambda e: e.cron("0 3 * * *", catch_up="yes"), "catch_up must be True or False"),
        (lambda e: e.every(0), "an interval of 1 second to"),
        (lambda e: e.every(timedelta(milliseconds=10)), "an interval of 1 second to"),
        (lambda e: e.every("5m"), "needs a timedelta or a number of seconds, got '5m'"),
        (lambda e: e.every(float("nan")), "an interval of 1 second to"),
    ],
)
def test_bad_schedules_are_refused_at_decoration_naming_the_valid_forms(
    make: object, says: str
) -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError) as caught:
        make(errands)(lambda: None)  # type: ignore[operator]
    assert says in str(caught.value)
    assert errands._core.schedules == [] and errands._core.tasks == {}


def test_a_scheduled_task_must_take_no_arguments_and_aliases_are_read() -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError, match="calls it with no arguments, but it takes"):

        @errands.cron("@daily", name="report")
        def report(day: str) -> None: ...

    assert "report" not in errands._core.tasks  # not left half registered

    @errands.cron("@hourly", name="hourly")
    def hourly(day: str = "today") -> str:  # defaults are fine
        return day

    [kept] = errands._core.schedules
    assert kept.cron == "0 * * * *" and kept.task is hourly and hourly() == "today"


def test_every_runs_once_a_tick_while_the_app_runs_and_join_adds_none() -> None:
    errands = Errands("memory://")
    runs: list[float] = []

    @errands.every(1, name="tick")
    def tick() -> None:
        runs.append(time.time())

    with TestClient(FastAPI(lifespan=errands.lifespan)):
        time.sleep(2.6)
    jobs = errands.jobs(limit=100)
    assert 2 <= len(jobs) <= 4 and len(runs) == len(jobs)  # the caught-up tick, then each second
    assert all(j.id.startswith("cron:tick:") and j.id.endswith("Z") for j in jobs)
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)
    assert len({j.id for j in jobs}) == len(jobs)
    asyncio.run(errands.join(timeout=5))  # no schedule in join: it ends
    assert len(errands.jobs(limit=100)) == len(jobs)


def test_a_start_catches_up_the_latest_tick_once_unless_told_not_to(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    for catch_up in (True, True, False):
        errands = Errands(url)

        @errands.every(3600, name="hourly", catch_up=catch_up)
        def hourly() -> None: ...

        with TestClient(FastAPI(lifespan=errands.lifespan)):
            time.sleep(0.3)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        assert [j.id for j in errands.jobs(limit=10)] == [
            f"cron:hourly:{hour.replace(tzinfo=None).isoformat()}Z"
        ]


def test_a_tick_older_than_retention_is_not_caught_up(tmp_path: Path) -> None:
    errands = Errands(f"sqlite:///{tmp_path}/j.db", retention=60)

    @errands.every(3600, name="hourly")
    def hourly() -> None: ...

    started = datetime.now(UTC)
    with TestClient(FastAPI(lifespan=errands.lifespan)):
        time.sleep(0.3)
    if started.minute * 60 + started.second >= 60:  # the hour's tick is past retention
        assert errands.jobs(limit=10) == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sched_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "postgres":
        url = postgres_url(request.getfixturevalue("postgres_database"))
    else:
        url = f"sqlite:///{tmp_path}/jobs.db"
    env = {"ERRANDS_URL": url, "DURABLE_LOG": str(tmp_path / "log")}
    (tmp_path / "log").touch()
    yield env


@pytest.mark.server
def test_three_web_processes_and_two_workers_make_one_job_a_tick(
    sched_env: dict[str, str], tmp_path: Path
) -> None:
    webs = [Server("tests.apps.scheduled:app", env={**sched_env, "WORKER": "0"}) for _ in range(3)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "tests.apps.scheduled:errands"],
            cwd=ROOT,
            env={**os.environ, **sched_env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        time.sleep(4.5)
    finally:
        for server in webs:
            server.stop()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    reader = Errands(sched_env["ERRANDS_URL"])
    jobs = [j for j in reader.jobs(limit=1000) if j.name == "tick"]
    ids = [j.id for j in jobs]
    assert len(ids) >= 4 and len(set(ids)) == len(ids)  # one job a tick
    ticks = sorted(datetime.fromisoformat(id.removeprefix("cron:tick:")) for id in ids)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))
    ran = (tmp_path / "log").read_text().splitlines()
    done = [j for j in jobs if j.status is JobStatus.SUCCEEDED]
    assert len(ran) == len(done) >= 3  # each ran once


@pytest.mark.celery
def test_celery_mode_makes_one_job_a_tick_from_two_app_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_service("redis")
    log = tmp_path / "log"
    monkeypatch.setenv("MODES_LOG", str(log))
    queue = f"errands-test-{uuid.uuid4().hex[:8]}"
    name = "tick"  # what modes.tick logs
    instances = []
    for _ in range(2):  # as two app processes would: each its own Celery app and Errands
        app = Celery("ticks", broker=modes.REDIS_BROKER, backend=modes.REDIS_BACKEND)
        app.conf.task_default_queue = queue
        errands = Errands(celery=app)
        errands.every(1, name="modes.tick")(modes.tick)
        instances.append(errands)
    worker = CeleryWorker("celery-redis", queue, log)
    try:
        clients = [TestClient(FastAPI(lifespan=e.lifespan)) for e in instances]
        for client in clients:
            client.__enter__()
        time.sleep(3.5)
        for client in clients:
            client.__exit__(None, None, None)
        wait_until(lambda: modes.lines().count(name) >= 3, 15)
        time.sleep(1)
        ids = {r.id for r in instances[0]._core.backend.publisher.jobs(None, 100)} | {
            r.id for r in instances[1]._core.backend.publisher.jobs(None, 100)
        }
        # Each app process published only the ticks it won; together, one a tick.
        published = len(instances[0]._core.backend.publisher.jobs(None, 100)) + len(
            instances[1]._core.backend.publisher.jobs(None, 100)
        )
        assert published == len(ids) and modes.lines().count(name) == len(ids)
    finally:
        worker.stop()
        delete_queues(instances[0]._core.backend.app, queue)
