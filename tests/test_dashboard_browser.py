"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright
with ``executable_path``; never a downloaded browser), against real uvicorn servers: an
operator opens the overview, filters the list, opens a failed job and reads its
traceback, presses Retry and watches it succeed, cancels a delayed job, purges; and the
same dashboard served alone by ``errands dashboard``. No console error, no request
beyond the server, no dialog but the purge's own question. Screenshots of each page go
to tests/artifacts/dashboard/ (ignored by git)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Server, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "tests" / "artifacts" / "dashboard"
AUTH = ("admin", "pw")
# The arguments of tests/apps/dashboard_app.py's job "bad" (and so its error).
XSS = "<script>alert('xss')</script><img src=x onerror=alert('img')>"
# What this machine's closed network needs (background requests of Chromium's own).
FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def sync_playwright() -> Any:
    """Playwright's sync API, or a skip (outside CI) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        missing = "Playwright for Python (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        missing = f"Debian's chromium at {CHROMIUM} (scripts/chromium installs it)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard's browser tests need {missing}")
        pytest.skip(f"needs {missing}")
    return start()


class Browser:
    """One page in Chromium, with everything that should not happen written down."""

    def __init__(self, playwright: Any, origin: str) -> None:
        self.origin = origin
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        self.context = self.browser.new_context(
            http_credentials={"username": AUTH[0], "password": AUTH[1]},
            viewport={"width": 1280, "height": 900},
        )
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.dialogs: list[str] = []
        self.context.route("**/*", self.only_the_server)
        self.page = self.context.new_page()
        self.page.on("console", self.console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("dialog", self.dialog)

    def only_the_server(self, route: Any) -> None:
        if route.request.url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.elsewhere.append(route.request.url)
            route.abort()

    def console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.browser.close()


@pytest.fixture
def playwright() -> Iterator[Any]:
    with sync_playwright() as started:
        yield started


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)
    return found


def test_an_operator_sees_acts_and_finds_no_surprise(playwright: Any, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    db = tmp_path / "jobs.db"
    server = Server(
        "tests.apps.dashboard_app:app", env={"DASHBOARD_DB": str(db), "DASHBOARD_FLAG": str(flag)}
    )
    browser = Browser(playwright, server.url)
    try:
        ids = httpx.post(server.url + "/seed").json()

        def settled() -> bool:
            stats = httpx.get(server.url + "/errands/api/stats", auth=AUTH).json()
            return bool(stats["counts"]["succeeded"] == 12 and stats["counts"]["failed"] == 2)

        wait_for(settled)
        base = server.url + "/errands"
        page = browser.page

        # The overview: counts, the chart, what needs attention, the tasks.
        page.goto(base + "/")
        assert page.locator(".count.failed .n").inner_text() == "2"
        assert page.locator(".count.succeeded .n").inner_text() == "12"
        assert page.locator(".chart rect.succeeded").count() >= 1
        assert "fickle" in page.locator(".attention").inner_text()
        assert page.locator("table.tasks tbody tr").count() == 3
        assert page.locator("link[rel=stylesheet]").get_attribute("href") == (
            "/errands/static/errands.css"
        )
        browser.shot("overview")

        # The list, filtered; it refreshes itself and keeps the filter.
        page.click("nav >> text=Jobs")
        page.select_option("select[name=status]", "failed")
        page.click("form.filters button")
        page.wait_for_url("**/errands/jobs?status=failed*")
        assert page.locator("table.jobs tbody tr").count() == 2
        stamp = page.locator("[data-updated]").inner_text()
        page.wait_for_function(
            "s => document.querySelector('[data-updated]').textContent !== s", arg=stamp,
            timeout=15_000,
        )  # fmt: skip
        assert "status=failed" in page.url
        assert page.locator("table.jobs tbody tr").count() == 2
        assert page.locator("select[name=status]").input_value() == "failed"
        browser.shot("jobs-failed")

        # A failed job: its error and traceback; Retry; it succeeds by itself on the page.
        page.click(f"a[href='/errands/jobs/{ids['fickle']}']")
        page.wait_for_url(f"**/errands/jobs/{ids['fickle']}")
        assert "ConnectionError: the mail server hung up on signup-42" in page.inner_text(
            ".failure .error"
        )
        assert "Traceback (most recent call last)" in page.inner_text("pre.traceback")
        browser.shot("job-failed")
        flag.write_text("up")
        page.click("button:text('Retry')")
        assert "Queued again" in page.inner_text(".done")
        page.wait_for_selector("h1 .badge.succeeded", timeout=30_000)
        assert '"signup-42 done"' in page.inner_text("#live")
        browser.shot("job-retried")

        # What a job holds is text, never markup that runs.
        page.goto(f"{base}/jobs/{ids['bad']}")
        assert XSS in page.inner_text(".failure .error")
        assert XSS in page.inner_text("#live pre >> nth=1")  # args
        assert page.locator("#live script, #live img[src=x]").count() == 0
        browser.shot("job-xss")

        # A delayed job, cancelled.
        page.goto(f"{base}/jobs/{ids['later']}")
        assert page.locator("h1 .badge.queued").count() == 1
        page.click("button:text('Cancel')")
        assert "Cancelled: the job will not run." in page.inner_text(".done")
        assert page.locator("h1 .badge.cancelled").count() == 1

        # Purge every finished job, after the page's question.
        page.goto(base + "/")
        page.select_option("select[name=older_than]", "0s")
        page.click("form.purge button")
        page.wait_for_selector(".done")
        assert page.inner_text(".done") == "Purged 15 finished job(s)."
        assert page.locator(".count.succeeded .n").inner_text() == "0"
        browser.shot("overview-purged")

        # The job id search, for an id no job has.
        page.fill("header input[name=id]", "no-such-job")
        page.press("header input[name=id]", "Enter")
        assert "No job no-such-job." in page.inner_text("[role=alert]")

        assert browser.errors == []
        assert browser.elsewhere == []
        assert browser.dialogs == ["Delete these finished jobs? This cannot be undone."]
    finally:
        browser.close()
        server.stop()


def test_errands_dashboard_serves_it_alone(playwright: Any, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    filled = Server(
        "tests.apps.dashboard_app:app",
        env={"DASHBOARD_DB": str(db), "DASHBOARD_FLAG": str(tmp_path / "f")},
    )
    try:
        httpx.post(filled.url + "/seed")
        wait_for(
            lambda: (
                httpx.get(filled.url + "/errands/api/stats", auth=AUTH).json()["counts"]["failed"]
                == 2
            )
        )
    finally:
        filled.stop()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    served = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "errands",
            "dashboard",
            f"sqlite:///{db}",
            "--port",
            str(port),
            "--auth",
            "admin:pw",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    origin = f"http://127.0.0.1:{port}"
    browser = Browser(playwright, origin)
    try:
        wait_for(lambda: reachable(origin))
        assert httpx.get(origin + "/").status_code == 401
        page = browser.page
        page.goto(origin + "/")
        assert page.locator(".count.failed .n").inner_text() == "2"
        assert page.locator(".top").evaluate("e => getComputedStyle(e).display") == "flex"
        browser.shot("standalone-overview")
        page.goto(origin + "/jobs?task=mail")
        assert page.locator("table.jobs tbody tr").count() == 13
        browser.shot("standalone-jobs")
        assert browser.errors == [] and browser.elsewhere == [] and browser.dialogs == []
    finally:
        browser.close()
        served.terminate()
        output, _ = served.communicate(timeout=10)
    assert f"errands dashboard of sqlite:///{db} on {origin}/ (Basic auth" in output


def reachable(origin: str) -> bool:
    try:
        httpx.get(origin + "/", timeout=0.5)
    except httpx.TransportError:
        return False
    return True
