"""Celery mode beyond the shared behaviour tests: Celery's tooling and routing, bad
configuration, a broker that is down or restarts, and workers that die mid-task.

Real Redis and RabbitMQ, real Celery worker processes, real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import (
    BackgroundTasks,
    BrokerUnavailable,
    ConfigurationError,
    Errands,
    JobRecord,
    JobStatus,
)
from tests.apps import modes
from tests.apps.counts import exported
from tests.conftest import (
    ROOT,
    CeleryWorker,
    free_port,
    require_service,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.celery

BROKERS = ["celery-redis", "celery-rabbitmq"]


@pytest.fixture(autouse=True)
def services() -> None:
    require_service("redis")
    require_service("rabbitmq")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "log"
    monkeypatch.setenv("MODES_LOG", str(path))
    return path


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"errands-test-{uuid.uuid4().hex[:8]}"
    yield name
    for broker in (modes.REDIS_BROKER, modes.RABBITMQ_BROKER):
        with Celery(broker=broker).connection_for_write() as connection:
            for q in (name, f"{name}-routed"):
                try:
                    connection.default_channel.queue_delete(q)
                except Exception:  # never declared on this broker
                    connection.default_channel  # noqa: B018 (a fresh channel for the next)


def status(errands: Errands, id: str) -> JobStatus | None:
    record = errands.get(id)
    return record.status if record is not None else None


def finished(errands: Errands, id: str, timeout: float = 30) -> JobRecord:
    record: JobRecord = wait_finished(errands, id, timeout)
    return record


# -- Celery's view of errands' tasks -------------------------------------------------


def test_registered_tasks_are_celery_tasks_under_their_names(log: Path, queue: str) -> None:
    mode = modes.make("celery-redis", queue=queue)
    assert mode.celery is not None
    assert {"modes.record", "modes.add", "modes.flaky"} <= set(mode.celery.tasks.keys())
    task = mode.celery.tasks["modes.add"]
    assert task.acks_late and task.reject_on_worker_lost and task.serializer == "json"
    worker = CeleryWorker("celery-redis", queue, log)
    try:
        # What `celery inspect registered` shows: the running worker has them.
        replies = mode.celery.control.inspect(timeout=5).registered() or {}
        names = {name for tasks in replies.values() for name in tasks}
        assert {"modes.record", "modes.add", "modes.sleepy"} <= names
        # The user's task_routes apply: this task goes to the "-routed" queue.
        routed = mode.errands._core.tasks["modes.routed"]
        assert routed is not None
        job = mode.errands.add_task(routed, "routed")
        record = finished(mode.errands, job.id)
        assert record.status is JobStatus.SUCCEEDED
        assert mode.celery.backend.get_task_meta(job.id)["queue"] == f"{queue}-routed"
    finally:
        worker.stop()


def test_messages_are_json_with_errands_name_and_arguments(queue: str) -> None:
    mode = modes.make("celery-redis", queue=queue)
    assert mode.celery is not None
    job = mode.errands.add_task(mode.add, 2, 3)
    with mode.celery.connection_for_read() as connection:
        message = connection.SimpleQueue(queue).get(timeout=5)
        try:
            assert message.content_type == "application/json"
            assert message.headers["task"] == "modes.add"
            assert message.headers["id"] == job.id
            assert message.payload[0] == [2, 3]
        finally:
            message.ack()
    record = mode.errands.get(job.id)
    assert record is not None and record.status is JobStatus.QUEUED


@pytest.mark.parametrize("mode_name", BROKERS)
def test_higher_priority_jobs_are_delivered_first_with_the_documented_settings(
    queue: str, mode_name: str
) -> None:
    mode = modes.make(mode_name, queue=queue)  # no worker: the messages wait
    assert mode.celery is not None
    mode.celery.conf.task_queue_max_priority = 10  # RabbitMQ (docs/celery.md)
    options = dict(mode.celery.conf.broker_transport_options or {})
    mode.celery.conf.broker_transport_options = {**options, "priority_steps": list(range(10))}
    ids = {p: mode.errands.add_task(mode.add.options(priority=p), p, 0).id for p in (0, 3, -2, 9)}
    delivered = []
    opts = {"max_priority": 10} if mode_name == "celery-rabbitmq" else {}
    with mode.celery.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue, queue_opts=opts)
        for _ in ids:
            message = simple.get(timeout=5)
            delivered.append(message.headers["id"])
            message.ack()
    assert delivered == [ids[9], ids[3], ids[0], ids[-2]]
    assert mode.errands.get(ids[9]).priority == 9  # type: ignore[union-attr]


def test_a_revoked_job_reads_cancelled(queue: str) -> None:
    """What a request that failed while its jobs were published leaves: revoked jobs."""
    mode = modes.make("celery-redis", queue=queue)  # no worker: the job waits
    job = mode.errands.add_task(mode.add, 1, 2)
    publisher = mode.errands._core.backend.publisher
    assert publisher.cancel([job.id], "dropped: request failed") == [job.id]
    record = mode.errands.get(job.id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.error is not None and "dropped: request failed" in record.error


# -- configuration -------------------------------------------------------------------


def test_an_app_that_accepts_pickle_is_refused() -> None:
    app = Celery(broker=modes.REDIS_BROKER, backend=modes.REDIS_BACKEND)
    app.conf.accept_content = ["json", "pickle"]
    with pytest.raises(ConfigurationError, match=r"accept_content.*\['json'\]"):
        Errands(celery=app)


def test_an_eager_celery_app_is_refused() -> None:
    app = Celery(broker=modes.REDIS_BROKER, backend=modes.REDIS_BACKEND)
    app.conf.task_always_eager = True
    with pytest.raises(ConfigurationError, match="task_always_eager"):
        Errands(celery=app)


def test_celery_worker_options_go_after_a_double_dash() -> None:
    from errands._cli import main

    with pytest.raises(SystemExit) as exit:
        main(["worker", "tests.apps.modes:errands", "-Q", "emails"])
    assert exit.value.code == 2


def test_a_finished_job_delivered_again_stays_finished(log: Path, queue: str) -> None:
    """What a second copy of a job (a redelivery) does to its state and its successor."""
    mode = modes.make("celery-redis", queue=queue)
    assert mode.celery is not None
    worker = CeleryWorker("celery-redis", queue, log)
    try:
        job = mode.errands.add_task(mode.add, 1, 1)
        assert finished(mode.errands, job.id).result == 2
    finally:
        worker.stop()
    store = mode.errands._core.backend.publisher
    # The copy's "running" does not overwrite the success...
    store.begin_states([(job.id, "STARTED", {"name": "modes.add"})], unless_final=True)(True)
    record = mode.errands.get(job.id)
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.result == 2
    # ...and only the first copy may start the next job of its request.
    assert store.hand_off(job.id) is not None
    assert store.hand_off(job.id) is None


def test_a_missing_result_backend_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="set result_backend"):
        Errands(celery=Celery(broker=modes.REDIS_BROKER))
    with pytest.raises(ConfigurationError, match="rpc://"):
        Errands(celery=Celery(broker=modes.RABBITMQ_BROKER, backend="rpc://"))


def test_url_and_celery_together_or_eager_are_refused() -> None:
    app = Celery(broker=modes.REDIS_BROKER, backend=modes.REDIS_BACKEND)
    with pytest.raises(ConfigurationError, match="not both"):
        Errands("memory://", celery=app)
    with pytest.raises(ConfigurationError, match="memory://"):
        Errands(celery=app, eager=True)


def test_the_celery_app_can_come_from_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRANDS_URL", "celery://tests.apps.celery_only:celery_app")
    errands = Errands()
    assert errands._core.backend.app.main == "celery-only"
    for url, problem in [
        ("celery://tests.apps.celery_only", "celery://module:attribute"),
        ("celery://tests.apps.nowhere:app", "cannot import"),
        ("celery://tests.apps.celery_only:nothing", "not a Celery app"),
    ]:
        with pytest.raises(ConfigurationError, match=problem):
            Errands(url)


def test_only_registered_refuses_plain_callables() -> None:
    errands = Errands("memory://", only_registered=True)
    app = FastAPI(lifespan=errands.lifespan)

    @app.post("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(print, "plain")

    with pytest.raises(ConfigurationError, match="only_registered=True"):
        errands.add_task(print, "plain")
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/").status_code == 500


# -- a broker that is down, or restarts -----------------------------------------------


def test_an_unreachable_broker_fails_the_request_in_bounded_time(log: Path, queue: str) -> None:
    port = free_port()  # nothing listens there
    app = Celery("down", broker=f"redis://127.0.0.1:{port}/0", backend=modes.REDIS_BACKEND)
    errands = Errands(celery=app, publish_timeout=2)
    task = errands.task(name="down.record")(modes.record)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=rf"127\.0\.0\.1:{port}"):
        errands.add_task(task, "never")
    assert time.monotonic() - started < 2 + 1  # publish_timeout, plus slack

    web = FastAPI(lifespan=errands.lifespan)

    @web.post("/")
    async def endpoint(tasks: BackgroundTasks) -> dict[str, str]:
        return {"job": tasks.add_task(task, "never").id}

    @web.exception_handler(BrokerUnavailable)
    async def unavailable(request: object, exc: BrokerUnavailable) -> object:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": str(exc)}, status_code=503)

    with TestClient(web) as client:
        response = client.post("/")
    assert response.status_code == 503
    assert "Celery broker" in response.json()["error"]
    assert "guest" not in response.json()["error"]
    with pytest.raises(BrokerUnavailable, match="is the broker running"):
        errands.stats()


class OwnRedis:
    """A Redis server of the test's own that keeps every write (appendfsync always),
    so it can be killed and started again like a broker machine that reboots."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: _answers(self.port), timeout=10)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class LocalRabbitMQ:
    """The machine's RabbitMQ service, stopped and started with rabbitmqctl."""

    url = modes.RABBITMQ_BROKER

    def __init__(self) -> None:
        if shutil.which("rabbitmqctl") is None:
            message = "rabbitmqctl is not installed: cannot restart the broker"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)

    def start(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: _answers(5672), timeout=30)

    def kill(self) -> None:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)


def _burst(
    client: TestClient, stop: threading.Event, acknowledged: list[str], refused: list[int]
) -> None:
    """Requests, one after another, each adding one job, until ``stop``."""
    while not stop.is_set():
        response = client.post(f"/one/{uuid.uuid4().hex[:8]}")
        if response.status_code == 200:
            acknowledged.append(response.json()["job"])
        else:
            assert response.status_code == 503, response.text
            refused.append(response.status_code)


@pytest.mark.parametrize("mode_name", BROKERS)
def test_broker_restart_during_a_burst_loses_nothing_acknowledged(
    tmp_path: Path, log: Path, queue: str, monkeypatch: pytest.MonkeyPatch, mode_name: str
) -> None:
    """Every request that got a 200 has its job run; the others got a clear 503.

    RabbitMQ: the machine's service is stopped and started while workers run.
    Redis: a server of the test's own is SIGKILLed and started again, with the
    worker started afterwards: kombu's Redis transport takes a message off the
    queue before recording it as unacknowledged, so a message on its way to a
    worker at the instant the server dies is lost with the connection (see the
    Celery section of the README). What errands answers for, that an acknowledged
    job is on the broker, is what this checks.
    """
    broker: OwnRedis | LocalRabbitMQ
    if mode_name == "celery-redis":
        broker = OwnRedis(tmp_path)
        broker.start()
        monkeypatch.setenv("MODES_BROKER", broker.url)
    else:
        broker = LocalRabbitMQ()
    mode = modes.make(mode_name, queue=queue)
    worker = CeleryWorker(mode_name, queue, log) if mode_name == "celery-rabbitmq" else None
    acknowledged: list[str] = []
    refused: list[int] = []
    stop = threading.Event()
    try:
        with TestClient(mode.app) as client:
            sender = threading.Thread(target=_burst, args=(client, stop, acknowledged, refused))
            sender.start()
            try:
                wait_until(lambda: len(acknowledged) >= 50, timeout=20)
                broker.kill()
                wait_until(lambda: len(refused) >= 1, timeout=20)
                broker.start()
                count = len(acknowledged)
                wait_until(lambda: len(acknowledged) >= count + 50, timeout=30)
            finally:
                stop.set()
                sender.join()
        # After the broker's restart, Celery 5.7's worker may have exited ("Unrecoverable
        # error", cf. celery#10205) or, seen on RabbitMQ, stopped consuming after an ack
        # failed on the dead connection. What errands answers for is that every
        # acknowledged job is on the broker: restart the worker, as operators do after
        # a broker restart, and check that they all run.
        if worker is not None:
            worker.stop()
        worker = CeleryWorker(mode_name, queue, log, name="w2")
        for id in acknowledged:
            assert finished(mode.errands, id).status is JobStatus.SUCCEEDED
        assert refused
    finally:
        if worker is not None:
            worker.stop()
        if isinstance(broker, OwnRedis) and broker.process and broker.process.poll() is None:
            broker.kill()
        elif isinstance(broker, LocalRabbitMQ) and not _answers(5672):
            broker.start()


# -- workers that die mid-task ---------------------------------------------------------


def held_by_workers(broker: str, queue: str, unacked: str) -> set[str] | None:
    """The ids of the jobs Redis records as held by workers (unacknowledged), or None
    while a message may be on its way to one: taken off the queue (BRPOP) and not
    yet recorded. A worker killed then loses that message: kombu's gap, not errands'
    (see celery/_redis.py), which a test must not kill into."""
    client = redis.Redis.from_url(broker)
    if client.llen(queue):
        return None  # a worker may take one at any moment
    held = set()
    for raw in client.hvals(unacked):
        message = json.loads(raw)[0]
        held.add(message["headers"]["id"])
    return held


def no_message_in_flight(
    mode: modes.Mode, broker: str, queue: str, ids: list[str], unacked: str = "unacked"
) -> bool:
    """Every job is either held by a worker, as Redis records it, or finished."""
    held = held_by_workers(broker, queue, unacked)
    if held is None:
        return False
    for id in ids:
        if id not in held:
            record = mode.errands.get(id)
            if record is None or not record.finished:
                return False
    return True


@pytest.mark.parametrize("mode_name", BROKERS)
def test_a_worker_killed_mid_task_loses_nothing(
    tmp_path: Path, log: Path, queue: str, mode_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = None
    if mode_name == "celery-redis":
        # A broker of its own, so that what Redis records as held is this test's only.
        broker = OwnRedis(tmp_path)
        broker.start()
        monkeypatch.setenv("MODES_BROKER", broker.url)
    mode = modes.make(mode_name, queue=queue)
    workers = {
        name: CeleryWorker(
            mode_name,
            queue,
            log,
            name=name,
            concurrency=2,
            env={"MODES_WORKER": name},
        )
        for name in ("a", "b")
    }
    try:
        long_task = mode.errands._core.tasks["modes.long"]
        assert long_task is not None
        tag = uuid.uuid4().hex[:8]
        long_job = mode.errands.add_task(long_task, tag, 2.0)
        quick = [mode.errands.add_task(mode.record, f"q{i}-{tag}").id for i in range(20)]
        wait_until(lambda: any(line.startswith(f"{tag} start") for line in modes.lines()), 20)
        first = next(line for line in modes.lines() if line.startswith(f"{tag} start"))
        victim = first.split()[-1]
        # Killed once its attempt is recorded as running (10 ms in): a lost attempt.
        wait_until(lambda: status(mode.errands, long_job.id) is JobStatus.RUNNING, 20)
        if broker is not None:
            ids = [long_job.id, *quick]
            wait_until(lambda: no_message_in_flight(mode, broker.url, queue, ids), 20)
        workers[victim].kill()  # SIGKILL, pool and all, in the middle of the 2 s task
        survivor = "b" if victim == "a" else "a"
        record = finished(mode.errands, long_job.id, timeout=60)
        assert record.status is JobStatus.SUCCEEDED
        assert record.result == survivor
        assert f"{tag} end {survivor}" in modes.lines()
        assert f"{tag} end {victim}" not in modes.lines()
        # Its first attempt was lost with its worker: counted, as in the other modes.
        assert (record.attempts, record.lost) == (2, 1)
        for id in quick:  # the victim's prefetched ones come back too (Redis: 5 s on)
            assert finished(mode.errands, id, timeout=60).status is JobStatus.SUCCEEDED
    finally:
        for worker in workers.values():
            worker.stop()
        if broker is not None:
            broker.kill()


def test_a_killed_redis_worker_s_jobs_run_on_another_within_a_lease(
    tmp_path: Path, log: Path, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """errands' defaults on a Redis broker, for an app that sets nothing: a worker is
    SIGKILLed while it runs one job and holds two more it has reserved; the other
    worker runs all three within the lease plus the sweep interval (plus the sweep's
    lock's expiry, should the worker have died holding it). The job it runs for
    longer than the lease runs once (the worker renews what it holds)."""
    # The sweep: a tenth of the lease, at least 1 s; its lock: a third, at least 5 s
    # (it bounds the wait too should the worker die while it sweeps).
    lease, sweep, lock = 6.0, 1.0, 5.0
    broker = OwnRedis(tmp_path)
    broker.start()
    for name, value in [
        ("MODES_BROKER", broker.url),
        ("MODES_CELERY_DEFAULTS", "1"),
        ("MODES_LEASE", str(lease)),
    ]:
        monkeypatch.setenv(name, value)
    mode = modes.make("celery-redis", queue=queue)
    long_task = mode.errands._core.tasks["modes.long"]
    assert long_task is not None
    tag = uuid.uuid4().hex[:8]
    long_job = mode.errands.add_task(long_task, tag, 12.0)  # twice the lease
    quick = [mode.errands.add_task(mode.record, f"{tag}-q{i}").id for i in range(2)]
    celery = [sys.executable, "-m", "celery", "-A", "tests.apps.modes:celery_app", "worker"]
    workers = []
    try:
        # One job at a time, three reserved: the first runs, the other two wait in it.
        workers.append(
            CeleryWorker(
                "celery-redis",
                queue,
                log,
                name="a",
                concurrency=1,
                env={"MODES_WORKER": "a"},
                command=[*celery, "-l", "info", "--prefetch-multiplier", "3"],
            )
        )
        ids = [long_job.id, *quick]
        wait_until(lambda: held_by_workers(broker.url, queue, "errands_unacked") == set(ids), 20)
        assert f"{tag} start a" in modes.lines()
        counts = str(tmp_path / "counts.jsonl")  # b's, through OpenTelemetry's metrics
        workers.append(
            CeleryWorker(
                "celery-redis", queue, log, name="b",
                env={"MODES_WORKER": "b", "METRICS_FILE": counts},
            )
        )  # fmt: skip
        assert "renews the messages it holds every 2 s" in workers[-1].text()
        assert f"{tag} end a" not in modes.lines()
        killed = time.time()
        workers[0].kill()
        for id in ids:
            record = finished(mode.errands, id, timeout=60)
            assert record.status is JobStatus.SUCCEEDED
            assert record.started_at is not None
            assert record.started_at.timestamp() - killed < lease + sweep + lock + 2  # slack
        record = finished(mode.errands, long_job.id)
        assert record.result == "b" and (record.attempts, record.lost) == (2, 1)
        assert modes.lines().count(f"{tag} start b") == 1  # renewed: not run twice
        for id in quick:  # reserved, never started: not lost attempts
            assert (finished(mode.errands, id).attempts, finished(mode.errands, id).lost) == (1, 0)
        # b found the attempt lost with a (it was redelivered), and counted it.
        lost = "errands.attempts|modes.long|lost"
        wait_until(lambda: exported(counts).get(lost) == 1, 10)
        assert exported(counts)["errands.attempts|modes.long|succeeded"] == 1
    finally:
        for worker in workers:
            worker.stop()
        broker.kill()


@pytest.mark.parametrize("mode_name", BROKERS)
def test_a_long_error_is_cut_on_its_way_to_the_retry(log: Path, queue: str, mode_name: str) -> None:
    """The last failed attempt's error and traceback travel to the next attempt in its
    message's headers, which must stay small (RabbitMQ: one frame, 128 KiB): they are
    cut, saying so, and the job succeeds on its retry."""
    mode = modes.make(mode_name, queue=queue)
    wordy = mode.errands._core.tasks["modes.wordy"]
    assert wordy is not None
    worker = CeleryWorker(mode_name, queue, log)
    try:
        record = finished(mode.errands, mode.errands.add_task(wordy, "w", 300_000).id)
        assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
        assert record.error is not None and record.traceback is not None
        assert record.error.startswith("RuntimeError: xxx")
        assert "characters cut by errands" in record.error and len(record.error) < 3_000
        assert "characters cut by errands" in record.traceback
        assert record.traceback.startswith("Traceback (most recent call last):")
        assert len(record.traceback) < 9_000
    finally:
        worker.stop()


# -- the errands CLI in Celery mode ----------------------------------------------------


def test_errands_worker_runs_a_celery_worker(log: Path, queue: str) -> None:
    mode = modes.make("celery-rabbitmq", queue=queue)
    worker = CeleryWorker(
        "celery-rabbitmq",
        queue,
        log,
        command=[
            sys.executable,
            "-m",
            "errands",
            "worker",
            "tests.apps.modes:errands",
            "--concurrency",
            "2",
            "--log-level",
            "info",
            "--",
            "-P",
            "threads",
        ],
    )
    try:
        assert "modes.add" in worker.text()  # Celery's banner lists the tasks
        record = finished(mode.errands, mode.errands.add_task(mode.add, 20, 22).id)
        assert record.status is JobStatus.SUCCEEDED and record.result == 42
    finally:
        worker.stop()
    assert worker.process.returncode == 0, worker.text()


def test_status_is_readable_from_another_process(log: Path, queue: str) -> None:
    mode = modes.make("celery-redis", queue=queue)
    worker = CeleryWorker("celery-redis", queue, log)
    try:
        job = mode.errands.add_task(mode.add, 1, 2)
        finished(mode.errands, job.id)
        script = (
            "from tests.apps import modes; import sys\n"
            f"mode = modes.make('celery-redis', queue='{queue}')\n"
            f"record = mode.errands.get('{job.id}')\n"
            "print(record.status.value, record.result, record.attempts)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert out.split() == ["succeeded", "3", "1"]
    finally:
        worker.stop()


def test_a_retry_the_broker_refuses_leaves_the_job_failed_to_retry_again(
    log: Path, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not published, not queued: a job the retry said ``queued`` that no message carries
    would never run, nor could it be retried."""
    mode = modes.make("celery-redis", queue=queue)
    worker = CeleryWorker("celery-redis", queue, log)
    try:
        fickle = mode.errands._core.tasks["modes.fickle"]
        job = mode.errands.add_task(fickle, uuid.uuid4().hex[:8], 1)
        assert finished(mode.errands, job.id).status is JobStatus.FAILED
        monkeypatch.setenv("MODES_BROKER", "redis://127.0.0.1:1/0")
        down = modes.make("celery-redis", queue=queue)  # its broker is down; same backend
        with pytest.raises(BrokerUnavailable, match="it is failed still: retry it again"):
            down.errands.retry(job.id)
        assert status(mode.errands, job.id) is JobStatus.FAILED
        again = mode.errands.retry(job.id)
        assert again.status is JobStatus.QUEUED
        record = finished(mode.errands, job.id)
        assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
    finally:
        worker.stop()
