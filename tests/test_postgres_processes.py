"""The PostgreSQL store with real processes: web processes and workers of their own on
one database (as on many hosts), a worker killed mid-job, and the server itself
restarted during a burst of requests. The store on its own is test_postgres_store.py."""

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from errands import Errands, JobStatus
from tests.conftest import Server, postgres_url
from tests.test_processes import Worker, lines, starts, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.server]

#: A line a job's run appends to $DURABLE_LOG (tests/apps/durable.py).
RUN = re.compile(r"(?:note|start) (\S+) pid=(\d+) job=(\S+) attempt=(\d+)")


def runs(env: dict[str, str], kind: str = "note") -> list[tuple[str, int, str, int]]:
    """Every run of a ``kind`` job so far: (token, pid, job id, attempt), in order."""
    found = []
    for line in lines(env):
        match = RUN.fullmatch(line)
        if match and line.startswith(kind + " "):
            token, pid, id, attempt = match.groups()
            found.append((token, int(pid), id, int(attempt)))
    return found


@pytest.fixture
def env(postgres_database: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "log").touch()
    return {"ERRANDS_URL": postgres_url(postgres_database), "DURABLE_LOG": str(tmp_path / "log")}


@pytest.fixture
def reader(env: dict[str, str]) -> Iterator[Errands]:
    """An instance on the test's store, as a process of its own would open it."""
    errands = Errands(env["ERRANDS_URL"])
    yield errands
    errands._core.backend.store.close()  # type: ignore[attr-defined]


@pytest.fixture
def processes() -> Iterator[tuple[list[Server], list[Worker]]]:
    """The web processes and workers a test starts: all stopped after it."""
    servers: list[Server] = []
    workers: list[Worker] = []
    yield servers, workers
    for server in servers:
        server.stop()
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        worker.log.close()


def test_two_web_processes_and_two_workers_on_one_database_run_each_acknowledged_job_once(
    env: dict[str, str],
    reader: Errands,
    processes: tuple[list[Server], list[Worker]],
) -> None:
    servers, workers = processes
    # Four processes, each with a pool of its own, as four hosts would be. The web
    # processes only add jobs (worker=False); two jobs at a time each worker, 5 ms a
    # job: neither can take everything.
    servers += [Server("tests.apps.durable:app", env={**env, "WEB_ONLY": "1"}) for _ in range(2)]
    workers += [Worker(env, CONCURRENCY="2", NOTE_SECONDS="0.005") for _ in range(2)]
    acknowledged: dict[str, str] = {}  # token: job id
    lock = threading.Lock()

    def burst(sender: int) -> None:
        with httpx.Client(base_url=servers[sender % 2].url, timeout=10) as client:
            for i in range(100):
                token = f"s{sender}-{i}"
                response = client.post(f"/note/{token}")
                assert response.status_code == 200, response.text
                with lock:
                    acknowledged[token] = response.json()

    senders = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert len(acknowledged) == 400
    wait_for(lambda: set(acknowledged) <= {run[0] for run in runs(env)}, timeout=30)
    time.sleep(0.5)  # a second run of any of them would show by now
    ran = runs(env)
    assert Counter(token for token, *_ in ran).most_common(1)[0][1] == 1  # each ran once
    assert {token: id for token, _, id, _ in ran} == acknowledged  # as the job its client got
    assert {attempt for *_, attempt in ran} == {1}
    pids = {pid for _, pid, _, _ in ran}
    assert pids == {worker.process.pid for worker in workers}  # both took a share
    for id in acknowledged.values():
        record = reader.get(id)
        assert record is not None and record.status is JobStatus.SUCCEEDED
        assert record.attempts == 1 and record.lost == 0

    # A worker killed while it holds a job: the other runs it again once its lease
    # (1 s) runs out, as a new attempt that says the first was lost.
    id = httpx.post(f"{servers[0].url}/slow/k", params={"seconds": 2.0}).json()
    wait_for(lambda: starts(env, "k") == 1)
    (_, pid, _, _) = runs(env, "start")[0]
    holder = next(worker for worker in workers if worker.process.pid == pid)
    killed = time.monotonic()
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait()
    wait_for(lambda: reader.get(id).status is JobStatus.SUCCEEDED, timeout=20)  # type: ignore[union-attr]
    record = reader.get(id)
    assert record is not None and record.attempts == 2 and record.lost == 1
    (first, again) = runs(env, "start")
    assert first[2:] == (id, 1) and again[2:] == (id, 2)
    assert again[1] != pid  # the other worker
    assert "done k" in lines(env)
    assert time.monotonic() - killed < 10  # about a lease, and the job's 2 s
    for worker in workers:
        if worker is not holder:
            worker.process.send_signal(signal.SIGTERM)
            output = worker.output(timeout=30)
            assert worker.process.returncode == 0 and "Traceback" not in output, output
    for server in servers:
        output = server.stop()
        assert "Traceback" not in output, output
