"""Worker processes and the SQLite store, with real processes and real signals."""

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from errands import Errands, JobStatus
from tests.conftest import ROOT, Server, postgres_url

pytestmark = pytest.mark.server


def environment(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"ERRANDS_URL": url, "DURABLE_LOG": str(tmp_path / "log")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "log").touch()
    return values


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The processes' environment: a store every durable one runs the same tests on
    (a SQLite file; a schema of the run's PostgreSQL database)."""
    if request.param == "postgres":
        url = postgres_url(request.getfixturevalue("postgres_database"))
    else:
        url = f"sqlite:///{tmp_path}/jobs.db"
    return environment(url, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """For what only a file has."""
    return environment(f"sqlite:///{tmp_path}/jobs.db", tmp_path, monkeypatch)


def lines(env: dict[str, str]) -> list[str]:
    return Path(env["DURABLE_LOG"]).read_text().splitlines()


def notes(env: dict[str, str]) -> list[str]:
    """The tokens of the note jobs that ran, once per run."""
    return [line.split()[1] for line in lines(env) if line.startswith("note ")]


def starts(env: dict[str, str], token: str) -> int:
    """How many attempts of the slow job ``token`` have started."""
    return sum(line.startswith(f"start {token} ") for line in lines(env))


def started(env: dict[str, str], token: str) -> bool:
    return starts(env, token) > 0


def note_pids(env: dict[str, str]) -> set[str]:
    return {line.split()[2] for line in lines(env) if line.startswith("note ")}


def wait_for(predicate: object, timeout: float = 15) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Worker:
    def __init__(self, env: dict[str, str], **extra: str) -> None:
        # A file, not a pipe: a worker logs a line a job, and a pipe nobody reads
        # would fill and stop it.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by output())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "tests.apps.durable:errands"],
            cwd=ROOT,
            env={**os.environ, **env, **extra},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, signum: int) -> str:
        self.process.send_signal(signum)
        return self.output(timeout=30)

    def printed(self) -> str:
        """What it printed so far (pread: the child shares the file's offset)."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def output(self, timeout: float) -> str:
        """All it printed, once it has exited."""
        self.process.wait(timeout=timeout)
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        return text


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.signal(signal.SIGKILL)
        worker.log.close()


def app_module() -> ModuleType:
    """The test app as this test's environment makes it (a fresh import)."""
    from tests.apps import durable

    return importlib.reload(durable)


def fresh() -> Errands:
    """An instance on the test's file, as another process would make it."""
    return Errands()


def test_a_worker_process_runs_jobs_added_by_another_process(
    env: dict[str, str], workers: list[Worker]
) -> None:
    app = app_module()
    errands, note = app.errands, app.note

    jobs = [errands.add_task(note, f"t{i}") for i in range(20)]
    workers.append(Worker(env))
    wait_for(lambda: len(notes(env)) == 20)
    reader = fresh()
    wait_for(lambda: all(reader.get(j.id).status is JobStatus.SUCCEEDED for j in jobs))  # type: ignore[union-attr]
    assert sorted(notes(env)) == sorted(f"t{i}" for i in range(20))


def test_a_job_whose_worker_is_killed_runs_again_on_another(
    env: dict[str, str], workers: list[Worker]
) -> None:
    app = app_module()
    errands, slow = app.errands, app.slow

    job = errands.add_task(slow, "k", 1.5)
    workers.append(Worker(env))
    wait_for(lambda: started(env, "k"))
    workers[0].signal(signal.SIGKILL)  # mid-job, no chance to clean up
    workers.append(Worker(env))
    reader = fresh()
    wait_for(lambda: reader.get(job.id).status is JobStatus.SUCCEEDED, timeout=20)  # type: ignore[union-attr]
    record = reader.get(job.id)
    assert record is not None
    assert record.attempts == 2 and record.lost == 1  # shown, not counted as a failure
    assert starts(env, "k") == 2


def test_a_job_longer_than_its_lease_is_never_taken_from_a_live_worker(
    env: dict[str, str], workers: list[Worker]
) -> None:
    app = app_module()
    errands, slow = app.errands, app.slow

    job = errands.add_task(slow, "long", 4.0)  # four leases (lease=1.0)
    workers.append(Worker(env))
    wait_for(lambda: started(env, "long"))
    workers.append(Worker(env))  # idle, polling: it must not take the job
    reader = fresh()
    wait_for(lambda: reader.get(job.id).status is JobStatus.SUCCEEDED, timeout=20)  # type: ignore[union-attr]
    record = reader.get(job.id)
    assert record is not None and record.attempts == 1 and record.lost == 0
    assert starts(env, "long") == 1


def test_sigterm_drains_running_jobs_and_leaves_the_rest_queued(
    env: dict[str, str], workers: list[Worker]
) -> None:
    app = app_module()
    errands, slow = app.errands, app.slow

    running = errands.add_task(slow, "first", 1.0)
    worker = Worker(env, DRAIN="10")
    workers.append(worker)
    wait_for(lambda: started(env, "first"))
    later = errands.add_task(slow, "later", 0)
    output = worker.signal(signal.SIGTERM)  # returns once the worker has exited
    assert worker.process.returncode == 0, output
    reader = fresh()
    assert reader.get(running.id).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
    # Not lost: either it ran before the signal, or it is still queued for the next worker.
    status = reader.get(later.id).status  # type: ignore[union-attr]
    if status is JobStatus.QUEUED:
        workers.append(Worker(env))
        wait_for(lambda: reader.get(later.id).status is JobStatus.SUCCEEDED)  # type: ignore[union-attr]
    else:
        assert status is JobStatus.SUCCEEDED


def test_sigterm_past_the_drain_timeout_gives_the_job_back(
    env: dict[str, str], workers: list[Worker]
) -> None:
    app = app_module()
    errands, slow = app.errands, app.slow

    job = errands.add_task(slow, "long", 30)
    worker = Worker(env, DRAIN="0.2")
    workers.append(worker)
    wait_for(lambda: started(env, "long"))
    worker.signal(signal.SIGTERM)
    record = fresh().get(job.id)
    assert record is not None and record.status is JobStatus.QUEUED and record.attempts == 0


def test_every_acknowledged_request_runs_after_the_server_is_killed(
    env: dict[str, str], workers: list[Worker]
) -> None:
    server = Server("tests.apps.durable:app", env=env)  # no worker in the server
    acknowledged: list[str] = []
    stop = threading.Event()

    def burst() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = client.post(f"/note/b{i}")
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acknowledged.append(f"b{i}")

    senders = [threading.Thread(target=burst) for _ in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGKILL)  # mid-burst
    stop.set()
    for sender in senders:
        sender.join()
    server.stop()
    assert len(acknowledged) > 20
    workers.append(Worker(env))
    wait_for(lambda: set(acknowledged) <= set(notes(env)), timeout=30)


def test_jobs_of_requests_that_failed_never_run(env: dict[str, str], workers: list[Worker]) -> None:
    server = Server("tests.apps.durable:app", env=env)
    try:
        assert httpx.post(f"{server.url}/note/fail1").status_code == 400
        assert httpx.post(f"{server.url}/note/ok1").status_code == 200
    finally:
        server.stop()
    workers.append(Worker(env))
    wait_for(lambda: "ok1" in notes(env))
    time.sleep(0.3)
    assert "fail1" not in notes(env)


def test_many_processes_on_one_store_run_each_job_once_and_all_make_progress(
    env: dict[str, str], workers: list[Worker]
) -> None:
    server = Server("tests.apps.durable:app", env=env, args=("--workers", "2"))
    logs = ""
    try:
        for _ in range(3):
            # Two jobs at a time each, 5 ms a job: no worker can take everything.
            workers.append(Worker(env, CONCURRENCY="2", NOTE_SECONDS="0.005"))
        acknowledged: list[str] = []
        lock = threading.Lock()

        def burst(sender: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for i in range(100):
                    response = client.post(f"/note/s{sender}-{i}")
                    assert response.status_code == 200, response.text
                    with lock:
                        acknowledged.append(f"s{sender}-{i}")
                    time.sleep(0.002)

        senders = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        wait_for(lambda: set(acknowledged) <= set(notes(env)), timeout=30)
        time.sleep(0.5)
        ran = notes(env)
        assert len(ran) == len(set(ran)) == 400  # each job ran once
        assert len(note_pids(env)) == 3  # every worker process took a share
        logs += "".join(w.signal(signal.SIGTERM) for w in workers)
    finally:
        logs += server.stop()
    assert "database is locked" not in logs
    assert "Traceback" not in logs, logs


def test_sigterm_to_a_server_drains_its_worker(env: dict[str, str]) -> None:
    server = Server("tests.apps.durable:app", env={**env, "SERVER_WORKER": "1"})
    job_id = httpx.post(f"{server.url}/slow/srv", params={"seconds": 1.0}).json()
    wait_for(lambda: started(env, "srv"))
    server.process.send_signal(signal.SIGTERM)
    output = server.stop()
    assert "done srv" in lines(env), output
    record = fresh().get(job_id)  # the server wrote the result before it exited
    assert record is not None and record.status is JobStatus.SUCCEEDED


def test_a_killed_web_process_delays_its_unreleased_jobs_by_about_a_lease_not_the_hold(
    env: dict[str, str], workers: list[Worker]
) -> None:
    workers.append(Worker(env))
    server = Server("tests.apps.durable:app", env={**env, "HOLD": "60"})
    try:
        with httpx.stream("GET", f"{server.url}/stream/orphan", timeout=30) as response:
            chunks = response.iter_lines()  # kept: dropping it would close the stream
            assert next(chunks) == "started"  # the endpoint returned: its job is stored
            time.sleep(3)  # three leases: the server lives, so its job waits for it
            assert "orphan" not in notes(env)
            server.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
    except httpx.HTTPError:
        pass  # the stream broke with its server, as it must
    finally:
        server.stop()
    wait_for(lambda: "orphan" in notes(env), timeout=20)
    # The lease is 1 s, the hold 60 s: it ran because its owner was gone.
    assert time.monotonic() - killed < 10


def test_an_older_worker_leaves_a_newer_tasks_jobs_for_a_worker_that_knows_them(
    env: dict[str, str], workers: list[Worker]
) -> None:
    old = Worker(env)
    workers.append(old)
    web = fresh()
    newer = web.task(name="newer")(lambda token: None)
    job = web.add_task(newer, "rolled")
    wait_for(lambda: any(w.tasks for w in web.stats().workers))
    time.sleep(1)  # many polls of the old worker
    record = web.get(job.id)
    assert record is not None and record.status is JobStatus.QUEUED and record.attempts == 0
    stats = web.stats()
    assert stats.unrunnable == {"newer": 1}
    assert all("newer" not in w.tasks for w in stats.workers)
    workers.append(Worker(env, NEWER="1"))
    wait_for(lambda: "newer rolled" in " ".join(lines(env)))
    # (Its outcome is written just after the task has logged.)
    wait_for(lambda: (r := web.get(job.id)) is not None and r.finished)
    record = web.get(job.id)
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.attempts == 1


def test_a_worker_whose_file_turns_corrupt_exits_with_one_line(
    sqlite_env: dict[str, str], workers: list[Worker], tmp_path: Path
) -> None:
    env = sqlite_env
    worker = Worker(env)
    workers.append(worker)
    app = app_module()
    job = app.errands.add_task(app.note, "before")
    wait_for(lambda: (r := app.errands.get(job.id)) is not None and r.finished)
    for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
        path = tmp_path / name
        if path.exists():
            path.write_bytes(b"this is not a database, not any more " * 200)
    out = worker.output(timeout=20)
    assert worker.process.returncode != 0
    assert "not a database" in out or "malformed" in out, out
    assert "Traceback" not in out and len(out.splitlines()) < 20, out


def test_a_served_app_says_where_its_jobs_go_in_uvicorns_log(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    env = sqlite_env
    server = Server(
        "tests.apps.durable:app", env={**env, "SERVER_WORKER": "1"}, args=("--log-level", "info")
    )
    output = server.stop()
    assert f"errands: worker running on sqlite:///{tmp_path}/jobs.db ({tmp_path}/jobs.db)" in (
        output
    )


def test_a_second_sigterm_still_drains_and_a_second_ctrl_c_does_not(
    env: dict[str, str], workers: list[Worker]
) -> None:
    """`timeout` and `kill -- -PGID` deliver SIGTERM to the process and to its group:
    twice. That must not cut the drain short; Ctrl-C twice is the way to."""
    app = app_module()
    errands, slow = app.errands, app.slow

    job = errands.add_task(slow, "first", 1.5)
    worker = Worker(env, DRAIN="10")
    workers.append(worker)
    wait_for(lambda: started(env, "first"))
    worker.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining for up to" in worker.printed())  # two, not one merged
    worker.process.send_signal(signal.SIGTERM)
    output = worker.output(timeout=30)
    assert worker.process.returncode == 0, output
    assert "already stopping" in output
    assert fresh().get(job.id).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]

    job = errands.add_task(slow, "second", 30)
    worker = Worker(env, DRAIN="10")
    workers.append(worker)
    wait_for(lambda: started(env, "second"))
    worker.process.send_signal(signal.SIGINT)
    wait_for(lambda: "draining for up to" in worker.printed())
    worker.process.send_signal(signal.SIGINT)
    output = worker.output(timeout=5)  # well before the task or the drain ends
    assert worker.process.returncode == 1, output
    assert "second Ctrl-C; exiting without draining" in output
    record = fresh().get(job.id)  # left running: it comes back after its lease
    assert record is not None and record.status is JobStatus.RUNNING


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_web_process_without_a_worker_says_it_stopped_when_its_app_stops(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from errands import BackgroundTasks
    from tests.conftest import postgres_url

    url = (
        postgres_url(request.getfixturevalue("postgres_database"))
        if store == "postgres"
        else f"sqlite:///{tmp_path}/jobs.db"
    )
    errands = Errands(url, worker=False)
    noop = errands.task(name="noop")(lambda: None)
    app = FastAPI(lifespan=errands.lifespan)

    @app.post("/")
    def add(tasks: BackgroundTasks) -> None:
        tasks.add_task(noop)

    with TestClient(app) as client:
        assert client.post("/").status_code == 200
        [web] = errands._core.backend.store.processes()  # type: ignore[attr-defined]
        assert web.role == "web" and web.stopped_at is None
    [web] = errands._core.backend.store.processes()  # type: ignore[attr-defined]
    assert web.stopped_at is not None
    errands._core.backend.store.close()  # type: ignore[attr-defined]
