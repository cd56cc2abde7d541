"""The examples under docs/examples run as shown."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("testing.py", "ok"),
        ("script.py", "['img0.png@320', 'img1.png@320', 'img2.png@320']"),
    ],
)
def test_runnable_examples_print_what_the_docs_say(example: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_the_testing_example_passes_under_pytest() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "docs" / "examples" / "testing.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_demo_serves_and_shows_jobs_reaching_a_final_state(tmp_path: Path) -> None:
    import time

    import httpx

    from tests.conftest import Server

    server = Server("docs.examples.demo:app", env={"ERRANDS_URL": f"sqlite:///{tmp_path}/d.db"})
    try:
        response = httpx.post(f"{server.url}/signup/ada@example.com")
        assert response.status_code == 200
        job_id = response.json()["job"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert status in ("succeeded", "failed")
        listed = httpx.get(server.url + "/errands/api/jobs").json()["jobs"]
        assert len(listed) >= 4  # three from startup and ours
        assert any(job["durable"] for job in listed)
        assert {job["name"] for job in listed} == {"send_welcome", "docs.examples.demo.write_log"}
        # The page: a signup form above the dashboard; the form leads to the job's page.
        home = httpx.get(server.url + "/").text
        assert 'action="/signup"' in home and 'src="/errands/"' in home
        signed = httpx.post(f"{server.url}/signup", data={"email": "grace@example.com"})
        assert signed.status_code == 303
        page = httpx.get(server.url + signed.headers["location"])
        assert page.status_code == 200 and "send_welcome" in page.text
        assert "grace@example.com" in page.text
    finally:
        server.stop()


SHOP_SCRIPT = """
import time
from fastapi.testclient import TestClient
from docs.examples.shop import app

with TestClient(app) as client:
    jobs = client.post("/orders/o1", params={"cents": 250}).json()
    for key in ("charge", "receipt"):
        deadline = time.monotonic() + 30
        while (job := client.get(f"/jobs/{jobs[key]}").json())["status"] not in (
            "succeeded", "failed"
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(job["status"], job["result"], job["durable"])
"""


@pytest.mark.parametrize("backend", ["memory", "sqlite", "celery-redis", "celery-rabbitmq"])
def test_the_shop_runs_unchanged_on_every_backend(backend: str, tmp_path: Path) -> None:
    """docs/examples/shop.py: the same file on memory, SQLite and Celery, by ERRANDS_URL."""
    import uuid

    from tests.apps import modes
    from tests.conftest import CeleryWorker, require_service

    queue = f"errands-shop-{uuid.uuid4().hex[:8]}"
    env = {"SHOP_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    env["ERRANDS_URL"] = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/shop.db",
    }.get(backend, "celery://docs.examples.shop:celery_app")
    worker = None
    if backend.startswith("celery"):
        require_service("redis")
        require_service("rabbitmq")
        broker = modes.REDIS_BROKER if backend == "celery-redis" else modes.RABBITMQ_BROKER
        env.update(SHOP_BROKER=broker, SHOP_RESULTS=modes.REDIS_BACKEND)
        command = [sys.executable, "-m", "errands", "worker", "docs.examples.shop:errands", "--"]
        worker = CeleryWorker(backend, queue, tmp_path / "log", command=command, env=env)
    try:
        result = subprocess.run(
            [sys.executable, "-c", SHOP_SCRIPT],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
            env={**os.environ, **env},
        )
    finally:
        if worker is not None:
            worker.stop()
    assert result.returncode == 0, result.stderr
    durable = backend != "memory"
    assert result.stdout.splitlines() == [
        f"succeeded charged 250 cents for o1 {durable}",
        f"succeeded receipt for o1 sent {durable}",
    ]


def test_the_operations_example_shows_a_job_the_failures_and_the_workers() -> None:
    from docs.examples import operations
    from fastapi.testclient import TestClient

    with TestClient(operations.app) as client:
        job = operations.errands.add_task(operations.build_report, "2026-11")
        for _ in range(200):
            record = client.get(f"/jobs/{job.id}").json()
            if record["status"] == "succeeded":
                break
            time.sleep(0.01)
        assert record["result"] == "report for 2026-11"
        assert client.get("/failures").json() == []
        health = client.get("/health/jobs").json()
        assert health["queued"] == 0 and health["unrunnable"] == {}
        assert len(health["workers"]) == 1  # this app's own worker, in its lifespan
        assert client.get("/jobs/nope").status_code == 404


def test_the_logs_example_shows_the_job_in_every_record() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "logs.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    [mine] = [line for line in lines if line.startswith("INFO shop ")]
    job = mine.split()[2]
    assert job.startswith("job=") and len(job) == 4 + 32
    assert mine.endswith("task=receipts.send #1 sending the receipt of o-1")
    assert any(
        line.startswith(f"INFO errands.jobs {job} task=receipts.send #1 job ") for line in lines
    )
    assert any(line.startswith("INFO errands job=None task=None #None worker") for line in lines)


@pytest.mark.postgres
def test_the_orders_example_commits_an_order_and_its_job_together() -> None:
    import uuid

    import psycopg

    from tests.conftest import POSTGRES_ADMIN, require_service

    # A database of its own: the example uses the default schema and its orders table.
    require_service("postgres")
    name = f"errands_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        ran = run_orders(f"postgresql://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "409 True succeeded"


def run_orders(database: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "orders.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
    )
