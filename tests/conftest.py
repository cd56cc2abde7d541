from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from errands import JobRecord
from tests.apps import modes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Captured output as UTF-8 can carry it: tests of undecodable file names log lone
    surrogates, which pytest-xdist cannot send from its worker processes."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real uvicorn server in a subprocess, serving ``module:app``."""

    def __init__(
        self, target: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (not a pipe: read at the end)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                target,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                httpx.get(self.url + "/health", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start")

    def output(self) -> str:
        return self.stop()

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); all it printed."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log.closed:
            return ""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        return text


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    target = request.param if hasattr(request, "param") else "tests.apps.timing:app"
    srv = Server(target)
    yield srv
    srv.stop()


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: the core behaviour tests run against every store."""
    if request.param == "postgres":
        return postgres_url(request.getfixturevalue("postgres_database"))
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"


def errands_command(
    cwd: Path | str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m errands ARGS`` in a process of its own, in ``cwd``, as a user runs it:
    without the test run's ``$ERRANDS_*``."""
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")},
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def wait_finished(errands: Any, id: str, timeout: float = 30) -> Any:
    """The job's record once it has finished (looked up as a client would: ``get``)."""
    deadline = time.monotonic() + timeout
    while True:
        record = errands.get(id)
        if record is not None and record.finished:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {id} not finished in {timeout} s: {record}")
        time.sleep(0.02)


SERVICES = {
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
    "postgres": ("127.0.0.1", 5432),
}


def require_service(name: str) -> None:
    """Skip when the service does not answer; under CI=true, fail instead."""
    host, port = SERVICES[name]
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc}); start it (see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


#: The server's own database, used only to create and drop the test run's database.
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this test run's own (``errands_test_<random>``), dropped after it:
    the URL of it. Tests never touch another database."""
    require_service("postgres")
    name = f"errands_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_url(database: str) -> str:
    """A store of its own in the run's database: a fresh schema."""
    return f"{database}?schema=t_{uuid.uuid4().hex[:12]}"


class CeleryWorker:
    """A real Celery worker process running ``tests.apps.modes``' Celery app."""

    def __init__(
        self,
        mode: str,
        queue: str,
        log: Path,
        *,
        name: str = "w",
        pool: str = "threads",
        concurrency: int = 4,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.output = log.with_name(f"{log.name}.{name}.out")
        self.name = name
        command = command or [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.modes:celery_app",
            "worker",
            "-l",
            "info",
        ]
        options = ["-P", pool, "-c", str(concurrency), "-Q", f"{queue},{queue}-routed"]
        quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.output.open("w") as out:
            self.process = self._start(
                # A node name of its own: another test run may use the same broker.
                [*command, *options, "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h", *quiet],
                out,
                {
                    "MODES_MODE": mode,
                    "MODES_QUEUE": queue,
                    "MODES_LOG": str(log),
                    **(env or {}),
                },
            )
        deadline = time.monotonic() + 30
        while "ready." not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"celery worker did not start:\n{self.text()}")
            time.sleep(0.1)

    @staticmethod
    def _start(argv: list[str], out: IO[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool's children are killed with it
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, as a machine that dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


#: Every mode, one line each: the behaviour tests (``test_modes.py``) and the backend
#: contract (``test_contract.py``) run on each. A new mode is one line here.
MODES = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("celery-redis", marks=pytest.mark.celery),
    pytest.param("celery-rabbitmq", marks=[pytest.mark.celery, pytest.mark.slow]),
]


class Running:
    """One mode's app, served by TestClient with its lifespan (and, in Celery mode, a
    real Celery worker process)."""

    def __init__(self, mode: modes.Mode, client: TestClient, queue: str) -> None:
        self.mode = mode
        self.errands = mode.errands
        self.client = client
        self.queue = queue

    def finished(self, id: str, timeout: float = 20) -> JobRecord:
        record: JobRecord = wait_finished(self.errands, id, timeout)
        return record


def delete_queues(app: object, queue: str) -> None:
    with app.connection_for_write() as connection:  # type: ignore[attr-defined]
        channel = connection.default_channel
        for name in (queue, f"{queue}-routed"):
            with contextlib.suppress(Exception):
                channel.queue_delete(name)


@pytest.fixture(scope="module", params=MODES)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    log = folder / "log"
    previous = os.environ.get("MODES_LOG")
    os.environ["MODES_LOG"] = str(log)
    worker = None
    queue = f"errands-test-{uuid.uuid4().hex[:8]}"
    try:
        if name.startswith("celery"):
            require_service("redis")
            if name == "celery-rabbitmq":
                require_service("rabbitmq")
        url = ""
        if name == "postgres":
            url = postgres_url(request.getfixturevalue("postgres_database"))
        mode = modes.make(name, path=str(folder / "jobs.db"), queue=queue, url=url)
        if mode.celery is not None:
            worker = CeleryWorker(name, queue, log)
        try:
            with TestClient(mode.app, raise_server_exceptions=False) as client:
                yield Running(mode, client, queue)
        finally:
            if name == "postgres":
                mode.errands._core.backend.store.close()  # its pool's connections
    finally:
        if worker is not None:
            worker.stop()
            delete_queues(mode.celery, queue)
        if previous is None:
            os.environ.pop("MODES_LOG", None)
        else:
            os.environ["MODES_LOG"] = previous
