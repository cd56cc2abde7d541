from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
            stdout=subprocess.PIPE,
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
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out.decode(errors="replace")


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


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: the core behaviour tests run against every store."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
