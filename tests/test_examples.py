"""The examples under docs/examples run as shown."""

import subprocess
import sys
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
        overview = httpx.get(server.url + "/").json()
        assert len(overview["jobs"]) >= 4  # three from startup and ours
        assert any(job["durable"] for job in overview["jobs"])
        assert {job["task"] for job in overview["jobs"]} == {
            "send_welcome",
            "docs.examples.demo.write_log",
        }
    finally:
        server.stop()
