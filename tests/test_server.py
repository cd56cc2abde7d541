"""Timing semantics against a real uvicorn server in a subprocess."""

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module", params=["inline", "worker"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(
        "tests.apps.timing:app", env={"TIMING_WORKER": "1" if request.param == "worker" else "0"}
    )
    yield srv
    srv.stop()


def marks_of(server: Server, token: str, *, wanting: str, timeout: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, float] = httpx.get(f"{server.url}/marks/{token}").json()
        if wanting in found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["async", "sync", "registered"])
def test_a_slow_task_does_not_delay_the_response(server: Server, kind: str) -> None:
    token = uuid.uuid4().hex
    started = time.monotonic()
    response = httpx.get(f"{server.url}/task/{kind}/{token}", params={"seconds": 1.0})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 0.8, f"the response waited {elapsed:.2f} s for a 1 s task"
    found = marks_of(server, token, wanting="task_finished")
    assert "task_finished" in found
    assert found["task_started"] >= found["endpoint"]


def test_tasks_start_only_after_the_last_chunk_of_a_streaming_response(server: Server) -> None:
    token = uuid.uuid4().hex
    assert httpx.get(f"{server.url}/stream/{token}").text == "0\n1\n2\n"
    found = marks_of(server, token, wanting="task_finished")
    assert found["task_started"] >= found["chunk2"]


def test_websocket_tasks_run_after_the_endpoint_returns(server: Server) -> None:
    token = uuid.uuid4().hex
    with connect(f"ws://127.0.0.1:{server.port}/ws/{token}") as ws:
        time.sleep(0.2)
        assert "task_started" not in marks_of(server, token, wanting="-", timeout=0)
        ws.send("done")
    found = marks_of(server, token, wanting="task_finished")
    assert found["task_started"] >= found["endpoint_returned"]


def test_a_client_that_disconnects_does_not_cancel_the_task(server: Server) -> None:
    token = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET /task/async/{token}?seconds=0.5 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.shutdown(socket.SHUT_RDWR)  # gone, while the task runs
    found = marks_of(server, token, wanting="task_finished")
    assert "task_finished" in found
