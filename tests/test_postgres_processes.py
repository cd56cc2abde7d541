"""The PostgreSQL store with real processes: web processes and workers of their own on
one database (as on many hosts), a worker killed mid-job, and the server itself
restarted during a burst of requests. The store on its own is test_postgres_store.py."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from errands import Errands, JobRecord, JobStatus, StoreError
from errands._record import utcnow
from errands.postgres import PostgresStore, parse_url
from errands.postgres._connections import AWAY_TIMEOUT, POOL_TIMEOUT
from tests.conftest import Server, free_port, postgres_url, require_service
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
    workers += [Worker(env, CONCURRENCY="2", NOTE_SECONDS="0.005") for _ in range(2)]
    servers += [Server("tests.apps.durable:app", env={**env, "WEB_ONLY": "1"}) for _ in range(2)]
    wait_for(lambda: len(reader.stats().workers) == 2)
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


# -- a server of the test's own, stopped and started again -------------------------------


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), if installed: on
    the PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    folders = Path("/usr/lib/postgresql").glob("*/bin")
    newest = sorted(folders, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])
    return newest[-1] if newest else None


class PrivatePostgres:
    """A PostgreSQL server of the test's own, in a temporary folder, on a free port:
    stopping it fails nobody else's tests. initdb refuses to run as root, so as root
    (CI) its programs run as the user postgres, in a folder it owns."""

    def __init__(self, bin: Path) -> None:
        self.bin = bin
        self.folder = Path(tempfile.mkdtemp(prefix="errands-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{program} failed:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        """Start the server (made by initdb the first time); returns once it accepts
        connections."""
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = str(self.folder / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` ends every connection (rolling back what is open)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    # Where the PostgreSQL tests must run (CI), this one must too: it needs the server's
    # programs, and the shared server only as the sign that PostgreSQL is installed.
    require_service("postgres")
    bin = postgres_bin()
    if bin is None:
        message = "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PrivatePostgres(bin)
    try:
        server.start()
        yield server
    finally:
        server.remove()


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_database_restart_during_a_burst_costs_no_acknowledged_job(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    (tmp_path / "log").touch()
    env = {
        "ERRANDS_URL": postgres_url(private_postgres.url),
        "DURABLE_LOG": str(tmp_path / "log"),
        # The default lease (30 s): the outage is shorter than two thirds of it (renewed
        # every third), so a job running across it stays its worker's. (With 10 s, a
        # lease renewed 3 s before the outage ran out before the server was back, and
        # the first claim after it ran that job again, as one whose worker died.) And
        # no poll to speak of: only a notification wakes the idle worker at once, so
        # its listening connection must come back with the server.
        "LEASE": "30",
        "POLL_ANNOUNCED": "30",
    }
    worker = Worker(env)
    reader = Errands(env["ERRANDS_URL"])
    server: Server | None = None
    stop = threading.Event()
    try:
        wait_for(lambda: bool(reader.stats().workers))
        server = Server("tests.apps.durable:app", env={**env, "WEB_ONLY": "1"})
        answers: list[tuple[float, float, str, int]] = []  # (sent, answered, token, status)

        def send(sender: int) -> None:
            assert server is not None
            with httpx.Client(base_url=server.url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    i += 1
                    sent = time.monotonic()
                    response = client.post(f"/note/{sender}-{i}")
                    if response.status_code == 503:
                        assert int(response.headers["Retry-After"]) > 0
                    answers.append((sent, time.monotonic(), f"{sender}-{i}", response.status_code))
                    time.sleep(0.01)

        senders = [threading.Thread(target=send, args=(n,)) for n in range(3)]
        for sender in senders:
            sender.start()
        time.sleep(1.0)
        cpu = cpu_seconds(worker.process.pid)
        down = time.monotonic()
        private_postgres.stop()  # -m fast: every connection is ended
        # Longer than a request waits for a connection (5 s): some get their 503.
        time.sleep(OUTAGE)
        private_postgres.start()
        up = time.monotonic()
        cpu = cpu_seconds(worker.process.pid) - cpu
        time.sleep(2.0)
        stop.set()
        for sender in senders:
            sender.join()

        statuses = Counter(status for *_, status in answers)
        assert set(statuses) <= {200, 503}, statuses  # never a 500
        assert statuses[503] >= 1, statuses
        # None waited longer than a wait for a connection (5 s) behind a batch of
        # writes that waited in vain (3 s), and none sent while the server was up was
        # refused: each request only ever meets the connections of its time.
        bound = POOL_TIMEOUT + AWAY_TIMEOUT + 1.5
        assert max(answered - sent for sent, answered, *_ in answers) < bound
        assert all(status == 200 for sent, _, _, status in answers if sent > up), answers
        assert all(status == 200 for _, answered, _, status in answers if answered < down)
        acknowledged = {token for *_, token, status in answers if status == 200}
        # How many depends on how busy the machine is (50-300 seen here); those sent in
        # the outage may all be answered after the load stops.
        assert len(acknowledged) > 20

        # Every acknowledged job runs, once: no process was started again.
        wait_for(lambda: acknowledged <= {run[0] for run in runs(env)}, timeout=20)
        time.sleep(0.5)
        ran = Counter(token for token, *_ in runs(env))
        assert all(ran[token] == 1 for token in acknowledged), ran.most_common(3)
        assert worker.process.poll() is None and server.process.poll() is None

        # The idle worker hears of a new job at once (it polls every 30 s): its
        # listening connection is back.
        time.sleep(1.0)
        added = time.monotonic()
        assert httpx.post(f"{server.url}/note/after", timeout=10).status_code == 200
        wait_for(lambda: "after" in {run[0] for run in runs(env)}, timeout=5)
        assert time.monotonic() - added < 2

        # The worker waited the outage out: it said so, without spinning.
        assert cpu < 0.2 * (up - down), f"{cpu:.2f} s of CPU in {up - down:.1f} s"
        printed = worker.printed()
        assert "listening for new jobs in the PostgreSQL store" in printed
        assert re.search(r"listening for new jobs .* works again", printed), printed
        assert "Traceback" not in printed, printed
    finally:
        stop.set()
        output = server.stop() if server is not None else ""
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
        printed = worker.output(timeout=30)
        reader._core.backend.store.close()  # type: ignore[attr-defined]
    assert worker.process.returncode == 0, printed
    assert "Traceback" not in output, output


#: How long the server is down: longer than a request waits for a connection.
OUTAGE = 6.0


@pytest.fixture
def private_store(private_postgres: PrivatePostgres) -> Iterator[PostgresStore]:
    """A store on the private server, its pool open."""
    if not (private_postgres.data / "postmaster.pid").exists():
        private_postgres.start()  # (a test that failed in its outage left it stopped)
    conninfo, schema, _ = parse_url(postgres_url(private_postgres.url))
    store = PostgresStore(conninfo, schema=schema)
    assert store.get("nothing") is None
    yield store
    store.close()


def works(store: PostgresStore) -> bool:
    try:
        return store.get("nothing") is None
    except StoreError:
        return False


def test_in_an_outage_a_batch_of_writes_fails_after_one_wait_and_calls_behind_it_sooner(
    private_postgres: PrivatePostgres, private_store: PostgresStore
) -> None:
    private_postgres.stop()
    down = time.monotonic()
    # One batch (a group commit) of four requests' writes: they fail together, after
    # one wait for a connection, not a wait each.
    failed = []
    with private_store.batch():
        for n in range(4):
            try:
                private_store.enqueue([JobRecord(id=f"j{n}", name="t", run_at=utcnow())])
            except StoreError as exc:
                failed.append(str(exc))
    assert len(failed) == 4 and all("cannot be reached" in e for e in failed), failed
    assert time.monotonic() - down < POOL_TIMEOUT + 2
    # The calls after it (the requests queued behind that batch) wait less.
    asked = time.monotonic()
    with pytest.raises(StoreError, match="cannot be reached"):
        private_store.get("nothing")
    assert AWAY_TIMEOUT < POOL_TIMEOUT and time.monotonic() - asked < AWAY_TIMEOUT + 1
    private_postgres.start()
    wait_for(lambda: works(private_store), timeout=10)


def test_a_store_connects_again_as_soon_as_the_server_is_back_from_a_long_outage(
    private_postgres: PrivatePostgres, private_store: PostgresStore
) -> None:
    private_postgres.stop()
    down = time.monotonic()
    # Calls meet the dropped connections, then one waits for a new one, and the pool
    # starts a round of attempts to connect for it: by psycopg_pool's default, with
    # pauses of 1, 2, 4, 8 s ... for 5 minutes, and no other round meanwhile.
    while True:
        asked = time.monotonic()
        assert not works(private_store)
        if time.monotonic() - asked > 1:
            break
    # Back after the round's first pauses: it would try next 8 s later, and refuse
    # calls till then (after an hour's outage, 2 minutes). A round now lasts 5 s, and
    # the next starts as it ends.
    time.sleep(max(0.0, down + 8.5 - time.monotonic()))
    private_postgres.start()
    up = time.monotonic()
    wait_for(lambda: works(private_store), timeout=15)
    assert time.monotonic() - up < 3.5
