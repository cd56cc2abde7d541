"""Prometheus metrics (``errands.metrics()``, the dashboard's ``/metrics``, ``errands
worker --metrics-port``): after jobs that succeed, fail, retry and time out, the counters
and histograms hold exactly those counts, the gauges match ``errands.stats()``, the text
reads back with prometheus-client's parser, and no label holds an id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from errands import ConfigurationError, Errands, JobStatus, Task
from tests.conftest import free_port, wait_finished, wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scraped(port: int) -> dict[Any, float]:
    """A worker's --metrics-port, read (empty while it does not answer yet)."""
    try:
        return samples(httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text)
    except httpx.TransportError:
        return {}


def tasks_of_every_outcome(errands: Errands) -> tuple[Task[Any, Any], ...]:
    """``ok`` succeeds, ``flaky`` fails its first attempt then succeeds, ``bad``
    fails, ``slow`` times out."""
    tries: list[int] = []

    @errands.task(name="ok")
    def ok(x: int) -> int:
        return x

    @errands.task(name="flaky", retries=1, backoff=0)
    def flaky() -> None:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("once")

    @errands.task(name="bad")
    def bad() -> None:
        raise ValueError("never")

    @errands.task(name="slow", timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    return ok, flaky, bad, slow


def test_counts_and_gauges_after_jobs_of_every_outcome(url: str) -> None:
    errands = Errands(url)
    ok, flaky, bad, slow = tasks_of_every_outcome(errands)

    def plain() -> None:
        pass

    app = Starlette(routes=[Mount("/metrics", errands.metrics())])

    async def main() -> str:
        async with errands.lifespan():
            for i in range(3):
                errands.add_task(ok, i)
            for task in (flaky, bad, slow):
                errands.add_task(task)
            errands.add_task(plain)
            later = errands.add_task(ok.options(delay=3600), 9)
            await asyncio.sleep(0)
            deadline = time.monotonic() + 20
            while sum(1 for r in errands.jobs(limit=100) if r.finished) < 7:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            return later.id

    later = asyncio.run(main())
    scrape = TestClient(app).get("/metrics/")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(scrape.text)
    plain_name = f"{__name__}.{plain.__qualname__}"

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    added = {t: value("errands_jobs_added_total", task=t) for t in ("ok", "flaky", "bad", "slow")}
    assert added == {"ok": 4, "flaky": 1, "bad": 1, "slow": 1}
    assert value("errands_jobs_added_total", task=plain_name) == 1
    outcomes = {
        ("ok", "succeeded"): 3,
        ("flaky", "retried"): 1,
        ("flaky", "succeeded"): 1,
        ("bad", "failed"): 1,
        ("slow", "timed_out"): 1,
        (plain_name, "succeeded"): 1,
    }
    counted = {
        (labels[1][1], labels[0][1]): v
        for (name, labels), v in found.items()
        if name == "errands_attempts_total"
    }
    assert counted == outcomes
    for task, attempts in (("ok", 3), ("flaky", 2), ("bad", 1), ("slow", 1)):
        assert value("errands_attempt_duration_seconds_count", task=task) == attempts
        assert value("errands_job_wait_seconds_count", task=task) == attempts
    assert value("errands_attempt_duration_seconds_sum", task="slow") >= 0.05
    assert value("errands_job_wait_seconds_sum", task="ok") < 5  # not the delayed one's hour
    stats = errands.stats()
    for name, counts in stats.tasks.items():
        for status in JobStatus:
            assert value("errands_jobs", task=name, status=status.value) == counts.get(status, 0)
    assert value("errands_jobs", task="ok", status="queued") == 1  # the delayed one
    assert ("errands_oldest_due_job_age_seconds", ()) in found
    assert value("errands_workers") == len(stats.workers)
    assert later not in scrape.text and "x" not in {k for _, ls in found for k, _ in ls}
    openmetrics = TestClient(app).get(
        "/metrics/", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_the_dashboard_serves_them_behind_its_auth() -> None:
    errands = Errands("memory://")
    app = Starlette(routes=[Mount("/errands", errands.dashboard(auth=("admin", "pw")))])
    with TestClient(app) as http:
        assert http.get("/errands/metrics/").status_code == 401
        scrape = http.get("/errands/metrics/", auth=("admin", "pw"))
        assert scrape.status_code == 200 and "errands_workers" in scrape.text


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'errands\[metrics\]'"):
        Errands("memory://").metrics()


APP = """
    from errands import Errands

    errands = Errands("sqlite:///jobs.db")


    @errands.task(name="work", retries=1, backoff=0)
    def work(fail: bool) -> str:
        if fail:
            raise RuntimeError("no")
        return "done"
"""


def test_a_workers_metrics_port_serves_what_it_ran(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_URL"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "errands", "worker", "app:errands", "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        adder = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False)

        @adder.task(name="work", retries=1, backoff=0)
        def work(fail: bool) -> str:  # the worker's own is app.py's
            raise AssertionError("runs in the worker")

        for fail in (False, False, True):
            adder.add_task(work, fail)

        key = ("errands_attempts_total", (("outcome", "failed"), ("task", "work")))
        wait_until(lambda: scraped(port).get(key) == 1, timeout=30, interval=0.2)
        found = scraped(port)
        assert found[("errands_attempts_total", (("outcome", "succeeded"), ("task", "work")))] == 2
        assert found[("errands_attempts_total", (("outcome", "retried"), ("task", "work")))] == 1
        assert found[("errands_jobs", (("status", "succeeded"), ("task", "work")))] == 2
        assert found[("errands_jobs", (("status", "failed"), ("task", "work")))] == 1
        assert found[("errands_workers", ())] == 1
    finally:
        worker.terminate()
        worker.communicate(timeout=20)


LOSER = """
    import os, time
    from errands import Errands

    errands = Errands("sqlite:///jobs.db", lease=1.0)


    @errands.task(name="hang")
    def hang() -> str:
        if not os.path.exists("ran-once"):
            open("ran-once", "w").close()
            time.sleep(60)  # killed here
        return "done"
"""


def test_an_attempt_lost_with_its_killed_worker_is_counted_lost(tmp_path: Path) -> None:
    """The worker that dies cannot count it: the one that finds its lease run out does."""
    (tmp_path / "app.py").write_text(textwrap.dedent(LOSER))
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_URL"}

    def worker(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "app:errands", *extra],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip

    doomed = worker()
    port = free_port()
    survivor = None
    try:
        adder = Errands(f"sqlite:///{tmp_path}/jobs.db", worker=False)

        @adder.task(name="hang")
        def hang() -> str:
            raise AssertionError("runs in the worker")

        job = adder.add_task(hang)
        wait_until(lambda: (tmp_path / "ran-once").exists(), timeout=30)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        survivor = worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
        assert wait_finished(adder, job.id).result == "done"

        lost = ("errands_attempts_total", (("outcome", "lost"), ("task", "hang")))
        done = ("errands_attempts_total", (("outcome", "succeeded"), ("task", "hang")))
        wait_until(lambda: scraped(port).get(done) == 1, timeout=20, interval=0.2)
        assert scraped(port)[lost] == 1
        record = adder.get(job.id)
        assert record is not None and record.lost == 1 and record.attempts == 2
    finally:
        for process in (doomed, survivor):
            if process is not None and process.poll() is None:
                process.terminate()
                process.communicate(timeout=20)


def test_several_processes_of_one_server_are_summed_in_multiprocess_mode(
    tmp_path: Path,
) -> None:
    """uvicorn --workers 2 with $PROMETHEUS_MULTIPROC_DIR: whichever process answers
    the scrape, it counts every process's jobs (prometheus-client's multiprocess mode)."""
    from tests.conftest import Server

    folder = tmp_path / "prom"
    folder.mkdir()
    server = Server(
        "tests.apps.metrics_app:app",
        env={"PROMETHEUS_MULTIPROC_DIR": str(folder)},
        args=("--workers", "2"),
    )
    try:
        pids: set[str] = set()
        added = 0
        while len(pids) < 2 or added < 20:  # until both processes took some
            assert added < 400, f"one process took every request: {pids}"
            answer = httpx.post(f"{server.url}/add/{added}", headers={"connection": "close"})
            pids.add(answer.json()["pid"])
            added += 1
        added_key = ("errands_jobs_added_total", (("task", "work"),))
        done_key = ("errands_attempts_total", (("outcome", "succeeded"), ("task", "work")))
        wait_until(
            lambda: samples(httpx.get(server.url + "/metrics/").text).get(done_key) == added,
            timeout=20,
        )
        for _ in range(6):  # each scrape may reach either process: each sums both
            found = samples(
                httpx.get(server.url + "/metrics/", headers={"connection": "close"}).text
            )
            assert found[added_key] == added and found[done_key] == added
    finally:
        server.stop()


def test_the_example_app_serves_its_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERRANDS_URL", f"sqlite:///{tmp_path}/errands.db")
    sys.modules.pop("docs.examples.metrics", None)
    from docs.examples.metrics import app, build_report, errands

    with TestClient(app) as http:
        job = errands.add_task(build_report, "2026-11")
        wait_until(lambda: (r := errands.get(job.id)) is not None and r.finished, timeout=20)
        found = samples(http.get("/metrics/").text)
    key = ("errands_attempts_total", (("outcome", "succeeded"), ("task", "reports.build")))
    assert found[key] == 1


def test_in_every_mode_adds_are_counted_here_and_gauges_read_the_store(running: Any) -> None:
    """The web process's view: the jobs it added, and the store's gauges (in Celery mode
    the attempts are counted by the Celery worker's process, as its port would show)."""
    app = Starlette(routes=[Mount("/metrics", running.errands.metrics())])
    before = samples(TestClient(app).get("/metrics/").text)
    key = ("errands_jobs_added_total", (("task", "modes.add"),))
    jobs = [running.errands.add_task(running.mode.add, i, 1) for i in range(3)]
    for job in jobs:
        running.finished(job.id)
    found = samples(TestClient(app).get("/metrics/").text)
    assert found[key] - before.get(key, 0) == 3
    stats = running.errands.stats()
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        gauge = found[("errands_jobs", (("status", status.value), ("task", "modes.add")))]
        assert gauge == stats.tasks["modes.add"].get(status, 0)
    done = ("errands_attempts_total", (("outcome", "succeeded"), ("task", "modes.add")))
    if running.mode.celery is None:
        assert found[done] - before.get(done, 0) == 3


def test_a_scrape_reads_the_store_off_the_event_loop_and_survives_its_failure() -> None:
    import threading

    from errands._metrics import Prometheus

    threads: list[str] = []

    def stats() -> Any:
        threads.append(threading.current_thread().name)
        raise ConfigurationError("the store is down")

    served = Prometheus(stats)
    served.attempted("t", "succeeded", 0.1, 0.2)

    async def loop_thread(scope: Any, receive: Any, send: Any) -> None:
        threads.append(threading.current_thread().name)
        await served.app()(scope, receive, send)

    found = samples(TestClient(loop_thread).get("/").text)
    assert found[("errands_store_up", ())] == 0  # and no gauge, but the counts
    assert found[("errands_attempts_total", (("outcome", "succeeded"), ("task", "t")))] == 1
    assert threads[0] != threads[1]  # the store was read off the event loop's thread


def test_the_grafana_dashboard_asks_only_for_what_is_served() -> None:
    """docs/grafana/errands.json: every series its queries name is in a scrape, and the
    outcomes it filters on are outcomes errands counts."""
    import json
    import re

    from errands._metrics import OUTCOMES

    dashboard = json.loads((Path(__file__).parent.parent / "docs/grafana/errands.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries.append(dashboard["templating"]["list"][1]["query"])
    errands = Errands("memory://")

    @errands.task(name="t")
    def t() -> None:
        pass

    async def main() -> None:
        async with errands.lifespan():
            errands.add_task(t)
            await errands.join(timeout=10)

    scraped = errands.metrics()
    asyncio.run(main())
    text = TestClient(scraped).get("/").text
    served = {name for name, _ in samples(text)}  # and families with no series yet:
    served |= {family.name for family in text_string_to_metric_families(text)}
    named = {name for query in queries for name in re.findall(r"\berrands_[a-z_]+", query)}
    assert named and named <= served, named - served
    filtered = {
        o for q in queries for m in re.findall(r'outcome=~"([^"]+)"', q) for o in m.split("|")
    }
    assert filtered and filtered <= {*OUTCOMES.values(), "timed_out", "lost"}
