"""The dashboard over HTTP: its pages, actions and JSON API in every mode (mounted at
/errands in the modes app, with a real Celery worker in Celery mode), its auth and
same-origin check, bad input, and ``errands dashboard``'s refusals. What a browser
does with it is tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from errands import ConfigurationError, Errands, JobStatus
from errands.sqlite import SQLiteStore
from tests.conftest import ROOT, Running, errands_command, wait_until

AUTH = ("admin", "secret")
SAME_ORIGIN = {"origin": "http://testserver"}


def tag() -> str:
    return uuid.uuid4().hex[:8]


def registered(running: Running, name: str) -> Any:
    return running.errands._core.tasks[name]


# -- every mode -------------------------------------------------------------------------


def test_a_failed_job_is_listed_shown_with_its_traceback_and_retried(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(registered(running, "modes.fickle"), t, 1)
    assert running.finished(job.id).status is JobStatus.FAILED
    client = running.client

    listed = client.get("/errands/jobs?status=failed&task=modes.fickle", auth=AUTH)
    assert listed.status_code == 200 and job.id in listed.text
    page = client.get(f"/errands/jobs/{job.id}", auth=AUTH)
    assert page.status_code == 200
    assert f"RuntimeError: attempt 1 of {t} failed" in page.text
    assert "Traceback (most recent call last)" in page.text
    assert 'action="/errands/actions/retry"' in page.text

    pressed = client.post(
        "/errands/actions/retry",
        data={"id": job.id},
        auth=AUTH,
        headers=SAME_ORIGIN,
        follow_redirects=False,
    )
    assert pressed.status_code == 303, pressed.text
    assert pressed.headers["location"] == f"/errands/jobs/{job.id}?done=retried"
    assert "Queued again" in client.get(pressed.headers["location"], auth=AUTH).text
    record = running.finished(job.id)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
    shown = client.get(f"/errands/api/jobs/{job.id}", auth=AUTH).json()
    assert shown["status"] == "succeeded" and shown["attempts"] == 2 and shown["result"] == "ok"


def test_a_delayed_job_is_cancelled_from_the_api(running: Running) -> None:
    job = running.errands.add_task(registered(running, "modes.record").options(delay=3600), tag())
    answer = running.client.post(
        "/errands/api/cancel", json={"id": job.id}, auth=AUTH, headers=SAME_ORIGIN
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] == "cancelled"
    assert answer.json()["job"]["status"] == "cancelled"
    record = running.errands.get(job.id)
    assert record is not None and record.status is JobStatus.CANCELLED
    again = running.client.post(
        "/errands/api/cancel", json={"id": job.id}, auth=AUTH, headers=SAME_ORIGIN
    )
    assert again.status_code == 409 and "cancelled already" in again.json()["detail"]
    unknown = running.client.post(
        "/errands/api/retry", json={"id": "nope"}, auth=AUTH, headers=SAME_ORIGIN
    )
    assert unknown.status_code == 404 and unknown.json() == {"detail": "no job nope"}


def test_the_overview_and_the_stats_api_show_tasks_and_the_last_hour(running: Running) -> None:
    job = running.errands.add_task(running.mode.add, 2, 3)
    running.finished(job.id)
    overview = running.client.get("/errands/", auth=AUTH)
    assert overview.status_code == 200
    assert "modes.add" in overview.text and "<svg" in overview.text
    stats = running.client.get("/errands/api/stats", auth=AUTH).json()
    assert set(stats["counts"]) == {s.value for s in JobStatus}
    assert stats["tasks"]["modes.add"]["succeeded"] >= 1
    assert len(stats["timeline"]) == 60
    assert sum(minute["succeeded"] for minute in stats["timeline"][-2:]) >= 1
    listed = running.client.get("/errands/api/jobs?task=modes.add", auth=AUTH).json()
    assert job.id in [r["id"] for r in listed["jobs"]] and listed["page"] == 1


def test_purge_from_the_dashboard(running: Running) -> None:
    job = running.errands.add_task(registered(running, "modes.record").options(delay=3600), tag())
    running.errands.cancel(job.id)
    answer = running.client.post(
        "/errands/api/purge",
        data={"older_than": "0s", "status": "cancelled"},
        auth=AUTH,
        headers=SAME_ORIGIN,
    )
    overview = running.client.get("/errands/", auth=AUTH).text
    if running.mode.celery is not None:  # results expire by themselves there
        assert answer.status_code == 409 and "result_expires" in answer.json()["detail"]
        assert 'action="/errands/actions/purge"' not in overview and "expire by" in overview
        return
    assert 'action="/errands/actions/purge"' in overview
    assert answer.status_code == 200 and answer.json()["deleted"] >= 1
    assert running.errands.get(job.id) is None
    page = running.client.post(
        "/errands/actions/purge",
        data={"older_than": "7d", "status": ["succeeded", "failed", "cancelled"]},
        auth=AUTH,
        headers=SAME_ORIGIN,
        follow_redirects=True,
    )
    assert "Purged 0 finished job(s)." in page.text
    none_ticked = running.client.post(
        "/errands/actions/purge", data={"older_than": "0s"}, auth=AUTH, headers=SAME_ORIGIN
    )
    assert none_ticked.status_code == 400 and "tick at least one status" in none_ticked.text


# -- one app ----------------------------------------------------------------------------


def make_app(auth: Any, mount: str = "/errands") -> tuple[Errands, FastAPI]:
    errands = Errands("memory://")

    @errands.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    @errands.task(name="bad")
    def bad(value: str) -> None:
        raise ValueError(f"bad {value}")

    app = FastAPI(lifespan=errands.lifespan)
    app.mount(mount, errands.dashboard(auth=auth))
    return errands, app


@pytest.fixture
def client() -> Iterator[tuple[Errands, TestClient]]:
    errands, app = make_app(AUTH)
    with TestClient(app) as client:
        yield errands, client


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@pytest.mark.parametrize("path", ["/errands/", "/errands/jobs", "/errands/static/errands.css"])
def test_without_the_right_credentials_there_is_a_401_and_no_data(
    client: tuple[Errands, TestClient], path: str
) -> None:
    _, http = client
    for headers in (
        {},
        basic("admin", "wrong"),
        basic("root", "secret"),
        {"authorization": "Basic !!"},
    ):
        answer = http.get(path, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Basic ")
        assert "errands" not in answer.text.replace("errands dashboard", "")
    assert http.get(path, headers=basic(*AUTH)).status_code == 200
    api = http.get("/errands/api/stats")
    assert api.status_code == 401 and api.json() == {
        "detail": "sign in to see the errands dashboard"
    }


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_callable_auth_decides_with_the_request(asynchronous: bool) -> None:
    def sync_check(request: Request) -> bool:
        return request.headers.get("x-token") == "let-me-in"

    async def async_check(request: Request) -> bool:
        await asyncio.sleep(0)
        return request.headers.get("x-token") == "let-me-in"

    _, app = make_app(async_check if asynchronous else sync_check)
    with TestClient(app) as http:
        assert http.get("/errands/").status_code == 403
        assert http.get("/errands/api/jobs").json() == {
            "detail": "the dashboard's auth refused this request"
        }
        assert http.get("/errands/", headers={"x-token": "let-me-in"}).status_code == 200


def test_auth_must_be_written_out_and_be_one_the_dashboard_can_use() -> None:
    errands = Errands("memory://")
    with pytest.raises(TypeError, match="auth"):
        errands.dashboard()  # type: ignore[call-arg]
    for bad in (("admin", ""), ("", "pw"), ("a:b", "pw"), ("admin",), "admin:pw", 42):
        with pytest.raises(ConfigurationError, match=r"auth|user|password"):
            errands.dashboard(auth=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must take one argument, the request"):
        errands.dashboard(auth=lambda: True)
    assert callable(errands.dashboard(auth=None))


def test_a_cross_site_post_is_refused_and_a_same_origin_one_goes_through(
    client: tuple[Errands, TestClient],
) -> None:
    errands, http = client
    job = errands.add_task(errands._core.tasks["echo"].options(delay=3600), "x")
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://testserver.evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site", "origin": "http://testserver"},
    ):
        answer = http.post(
            "/errands/actions/cancel", data={"id": job.id}, headers={**basic(*AUTH), **headers}
        )
        assert answer.status_code == 403, headers
        assert "refused" in answer.text
        record = errands.get(job.id)
        assert record is not None and record.status is JobStatus.QUEUED
    behind_a_proxy = {"origin": "https://jobs.example.com", "x-forwarded-host": "jobs.example.com"}
    answer = http.post(
        "/errands/api/cancel", json={"id": job.id}, headers={**basic(*AUTH), **behind_a_proxy}
    )
    assert answer.status_code == 200 and answer.json()["done"] == "cancelled"
    # A script (no Origin, no Sec-Fetch-Site: no browser sent it) needs only the auth.
    answer = http.post("/errands/api/retry", json={"id": job.id}, headers=basic(*AUTH))
    assert answer.status_code == 200 and answer.json()["job"]["status"] == "queued"


def test_bad_input_gets_a_clear_answer(client: tuple[Errands, TestClient]) -> None:
    _, http = client
    auth = basic(*AUTH)
    cases = {
        "/errands/jobs?page=-1": (400, "page must be a whole number from 1 up, got &#39;-1&#39;"),
        "/errands/jobs?page=two": (400, "page must be a whole number"),
        "/errands/jobs?status=nonsense": (400, "is not a job status; use one of"),
        "/errands/jobs/..%2F..%2Fetc%2Fpasswd": (404, "no job ../../etc/passwd"),
        "/errands/api/jobs?page=0": (400, "page must be a whole number"),
        "/errands/api/jobs?status=done": (400, "is not a job status"),
    }
    for path, (status, message) in cases.items():
        answer = http.get(path, headers=auth)
        assert answer.status_code == status, path
        assert message in answer.text, (path, answer.text[:500])
    huge = "x" * 10_240
    answer = http.get(f"/errands/jobs/{huge}", headers=auth)
    assert answer.status_code == 404 and "(10,240 characters)" in answer.text
    assert len(answer.text) < 20_000
    assert http.get(f"/errands/api/jobs/{huge}", headers=auth).status_code == 404
    answer = http.get(f"/errands/jobs?id={huge}", headers=auth)  # the list, saying so
    assert answer.status_code == 200 and "No job xxx" in answer.text
    answer = http.post("/errands/api/cancel", json=[1, 2], headers=auth)
    assert answer.status_code == 400 and "JSON object" in answer.json()["detail"]
    answer = http.post("/errands/api/cancel", json={}, headers=auth)
    assert answer.status_code == 400 and "needs id=" in answer.json()["detail"]
    answer = http.post("/errands/api/purge", data={"older_than": "soon"}, headers=auth)
    assert answer.status_code == 400 and "30s, 15m, 2h, 7d" in answer.json()["detail"]
    answer = http.post(
        "/errands/api/purge", data={"older_than": "1d", "status": "queued"}, headers=auth
    )
    assert answer.status_code == 400 and "finished jobs only" in answer.json()["detail"]
    # A purge deletes nothing it was not asked to: no age, a typo, JSON sent as a form.
    wrong = {
        "needs older_than=": {"json": {"status": ["failed"]}},
        "purge takes older_than and status, not older-than, statuses": {
            "json": {"older-than": "7d", "statuses": ["failed"]}
        },
        'purge takes older_than and status, not {"older_than"': {
            "content": b'{"older_than": "7d", "status": ["failed"]}',
            "headers": {**auth, "content-type": "application/x-www-form-urlencoded"},
        },
        "status is an empty list": {"json": {"older_than": "7d", "status": []}},
        "older_than is at most ten years": {"json": {"older_than": "99999d"}},
    }
    for message, request in wrong.items():
        answer = http.post("/errands/api/purge", **{"headers": auth, **request})  # type: ignore[arg-type]
        assert answer.status_code == 400 and message in answer.json()["detail"], answer.text
    for body in (b'{"id": null}', b'{"id": ["a", 1]}', b'{"id": "\\ud800"}'):
        answer = http.post(
            "/errands/api/cancel",
            content=body,
            headers={**auth, "content-type": "application/json"},
        )
        assert answer.status_code == 400 and "JSON object of text" in answer.json()["detail"]
    nested = b'{"id": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    answer = http.post(
        "/errands/api/retry", content=nested, headers={**auth, "content-type": "application/json"}
    )
    assert answer.status_code == 400 and "RecursionError" in answer.json()["detail"]
    assert http.get("/errands/?done=purged&n=\u00b2", headers=auth).status_code == 200
    answer = http.post("/errands/api/cancel", content=b"id=" + b"x" * 70_000, headers=auth)
    assert answer.status_code == 413
    answer = http.post("/errands/api/reboot", json={"id": "x"}, headers=auth)
    assert answer.status_code == 404 and "cancel, retry, purge" in answer.json()["detail"]


def test_a_store_that_fails_an_action_is_a_503_not_a_conflict(tmp_path: Path) -> None:
    """Cancel, retry and purge when the store cannot write (here: locked by another
    process past its busy timeout): 503, which may pass, never the 409 that says the
    job's state forbids it."""
    errands = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False)

    @errands.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    app = FastAPI(lifespan=errands.lifespan)
    app.mount("/errands", errands.dashboard(auth=AUTH))
    with TestClient(app) as http:
        queued = errands.add_task(echo, 1)
        failed = errands.add_task(echo, 2)
        failed_id = failed.id
        errands.cancel(failed_id)  # cancelled: a retry would be allowed
        backend = errands._core.backend
        backend.store.close()  # the same file, with a short busy timeout
        backend.store = SQLiteStore(tmp_path / "jobs.db", busy_timeout=0.1)
        other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a long write elsewhere
        try:
            actions = {
                "cancel": {"id": queued.id},
                "retry": {"id": failed_id},
                "purge": {"older_than": "0s", "status": ["cancelled"]},
            }
            for action, body in actions.items():
                answer = http.post(
                    f"/errands/api/{action}", json=body, auth=AUTH, headers=SAME_ORIGIN
                )
                assert answer.status_code == 503, (action, answer.text)
                assert "was locked by another process" in answer.json()["detail"]
            page = http.post(
                "/errands/actions/retry", data={"id": failed_id}, auth=AUTH, headers=SAME_ORIGIN
            )
            assert page.status_code == 503 and "was locked by another process" in page.text
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Nothing was lost: it passes once the lock is gone.
        answer = http.post(
            "/errands/api/retry", json={"id": failed_id}, auth=AUTH, headers=SAME_ORIGIN
        )
        assert answer.status_code == 200 and answer.json()["job"]["status"] == "queued"
        record = errands.get(queued.id)
        assert record is not None and record.status is JobStatus.QUEUED


def test_what_a_job_holds_is_shown_escaped(client: tuple[Errands, TestClient]) -> None:
    errands, http = client
    script = "<script>alert('x')</script>"
    job = errands.add_task(errands._core.tasks["bad"], script)
    wait_until(lambda: (r := errands.get(job.id)) is not None and r.finished)
    page = http.get(f"/errands/jobs/{job.id}", headers=basic(*AUTH)).text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    listed = http.get("/errands/jobs", headers=basic(*AUTH)).text
    assert "<script>alert" not in listed and "ValueError: bad &lt;script&gt;" in listed
    headers = http.get("/errands/", headers=basic(*AUTH)).headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "SAMEORIGIN" and headers["cache-control"] == "no-store"


def test_links_and_assets_follow_the_mount_and_pages_go_back_in_time() -> None:
    errands, app = make_app(None, mount="/ops/queue")
    with TestClient(app) as http:
        jobs = [
            errands.add_task(errands._core.tasks["echo"].options(delay=3600), i) for i in range(60)
        ]
        page = http.get("/ops/queue/jobs").text
        assert 'href="/ops/queue/static/errands.css"' in page
        assert 'src="/ops/queue/static/errands.js"' in page
        assert f'href="/ops/queue/jobs/{jobs[-1].id}"' in page
        assert jobs[0].id not in page  # the oldest is on page 2
        assert 'href="/ops/queue/jobs?page=2"' in page
        second = http.get("/ops/queue/jobs?page=2").text
        assert f'href="/ops/queue/jobs/{jobs[0].id}"' in second and "← Newer" in second
        assert http.get("/ops/queue/static/errands.js").status_code == 200
        found = http.get(f"/ops/queue/jobs?id={jobs[5].id}", follow_redirects=False)
        assert found.status_code == 303
        assert found.headers["location"] == f"/ops/queue/jobs/{jobs[5].id}"
        assert [r.id for r in errands.jobs(limit=2, offset=58)] == [jobs[1].id, jobs[0].id]
        with pytest.raises(ValueError, match="offset must be an int >= 0"):
            errands.jobs(offset=-1)


def test_a_missing_extra_is_named_with_its_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("errands._dashboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'errands\[dashboard\]'"):
        Errands("memory://").dashboard(auth=None)


# -- errands dashboard ------------------------------------------------------------------


def command(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return errands_command(cwd or ROOT, "dashboard", *args)


def test_errands_dashboard_refuses_to_serve_other_machines_without_auth(tmp_path: Any) -> None:
    started = time.monotonic()
    refused = command("sqlite:///nowhere.db", "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "--host 0.0.0.0 can be reached from other machines: give --auth" in refused.stderr
    assert command("--host", "::", "--auth", "admin").returncode == 2
    assert "USER:PASSWORD" in command("--auth", "admin:", cwd=str(tmp_path)).stderr
    memory = command("memory://", cwd=str(tmp_path))
    assert memory.returncode == 2 and "keeps its jobs in the memory" in memory.stderr
    missing = command(cwd=str(tmp_path))
    assert missing.returncode == 2 and "no errands.db" in missing.stderr
    assert time.monotonic() - started < 60


def test_the_example_app_mounts_it_behind_basic_auth_and_a_check_of_its_own() -> None:
    from docs.examples.dashboard import app, build_report, errands

    with TestClient(app) as http:
        job = errands.add_task(build_report, "2026-11")
        wait_until(lambda: (r := errands.get(job.id)) is not None and r.finished)
        assert http.get("/errands/").status_code == 401
        page = http.get(f"/errands/jobs/{job.id}", auth=("admin", "change me"))
        assert page.status_code == 200 and "report for 2026-11" in page.text
        assert http.get("/ops/errands/api/stats").status_code == 403
        stats = http.get("/ops/errands/api/stats", headers={"x-staff-token": "let-me-in"})
        assert stats.json()["tasks"] == {"reports.build": {"succeeded": 1}}


def test_the_overview_names_jobs_running_too_long(tmp_path: Any) -> None:
    """Past its task's timeout (a worker that died holding it, before its lease ends),
    or over 10 times its task's p95 of the last hour."""
    from datetime import UTC, datetime, timedelta

    from errands import JobRecord

    errands = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False)

    @errands.task(name="bounded", timeout=60)
    def bounded() -> None: ...

    @errands.task(name="usual")
    def usual() -> None: ...

    now = datetime.now(UTC)
    quick = [
        JobRecord(
            id=f"quick{i}",
            name="usual",
            status=JobStatus.SUCCEEDED,
            created_at=now - timedelta(minutes=5),
            started_at=now - timedelta(minutes=5),
            finished_at=now - timedelta(minutes=5) + timedelta(seconds=1),
        )
        for i in range(5)
    ]
    running = [
        JobRecord(
            id=name, name=name, status=JobStatus.RUNNING, created_at=now - ago, started_at=now - ago
        )
        for name, ago in (("bounded", timedelta(minutes=2)), ("usual", timedelta(seconds=12)))
    ]
    fine = JobRecord(
        id="fine", name="usual", status=JobStatus.RUNNING, created_at=now, started_at=now
    )
    errands._core.backend.store.enqueue([*quick, *running, fine])
    app = FastAPI()
    app.mount("/errands", errands.dashboard(auth=None))
    page = TestClient(app).get("/errands/").text
    assert "Running too long" in page
    assert "past its timeout (1m 0s)" in page
    assert "over 10 times its task&#39;s p95 (1.0s)" in page
    assert 'href="/errands/jobs/bounded"' in page and 'href="/errands/jobs/usual"' in page
    assert 'href="/errands/jobs/fine"' not in page


def test_errands_dashboard_without_auth_answers_only_to_this_machines_names(
    tmp_path: Any,
) -> None:
    """Served with no auth on loopback, it refuses a Host another site's name (a DNS
    rebinding points attacker.example at 127.0.0.1: the browser sends that name)."""
    import httpx

    from tests.conftest import free_port

    store = tmp_path / "errands.db"
    Errands(f"sqlite:///{store}", worker=False).stats()  # makes the file
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    served = subprocess.Popen(
        [sys.executable, "-m", "errands", "dashboard", "--port", str(port), "--root-path", "/ops"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        origin = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(origin + "/api/stats", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, interval=0.1)
        assert httpx.get(f"http://localhost:{port}/api/jobs").status_code == 200
        rebound = httpx.get(origin + "/api/jobs", headers={"host": f"attacker.example:{port}"})
        assert rebound.status_code == 421 and "answers only to" in rebound.text
        assert "jobs" not in rebound.text
        post = httpx.post(
            origin + "/api/retry",
            json={"id": "x"},
            headers={"host": "attacker.example", "origin": "http://attacker.example"},
        )
        assert post.status_code == 421
        taken = command("--port", str(port), cwd=str(tmp_path))
        assert taken.returncode == 1 and f"could not serve on 127.0.0.1:{port}" in taken.stderr
    finally:
        served.terminate()
        _, said = served.communicate(timeout=10)
    assert (
        f"on http://127.0.0.1:{port}/ (no auth: this machine only; its proxy serves it under /ops/"
        in said
    )
