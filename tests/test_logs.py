"""Every log record about a job carries ``job_id``, ``task`` and ``attempt``: errands'
own (as ``extra``), and, with ``errands.JobLogFilter`` on a handler, those a task logs
itself while it runs: ``async def`` and ``def`` tasks, retries, plain callables, on
every store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from errands import Errands, JobLogFilter


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(JobLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, logger: str) -> list[tuple[Any, Any, Any, str]]:
        return [
            (r.job_id, r.task, r.attempt, r.getMessage())  # type: ignore[attr-defined]
            for r in self.records
            if r.name == logger
        ]


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    for name in ("app", "errands.jobs"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    for name in ("app", "errands.jobs"):
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_records_say_which_job_and_attempt_they_are_about(url: str, kept: Kept) -> None:
    errands = Errands(url)
    app_log = logging.getLogger("app")
    tries: list[int] = []

    @errands.task(name="flaky", retries=1, backoff=0)
    async def flaky(n: int) -> None:
        app_log.info("async %d", n)
        tries.append(n)
        if len(tries) == 1:
            raise RuntimeError("first try fails")

    @errands.task(name="blocking")
    def blocking(n: int) -> None:
        app_log.info("def %d", n)

    def plain(n: int) -> None:
        app_log.info("plain %d", n)

    async def main() -> tuple[str, str, str]:
        async with errands.lifespan():
            ids = (
                errands.add_task(flaky, 1).id,
                errands.add_task(blocking, 2).id,
                errands.add_task(plain, 3).id,
            )
            await errands.join(timeout=20)
            return ids

    flaky_id, blocking_id, plain_id = asyncio.run(main())
    app = kept.about("app")
    assert (flaky_id, "flaky", 1, "async 1") in app
    assert (flaky_id, "flaky", 2, "async 1") in app  # the retry is attempt 2
    assert (blocking_id, "blocking", 1, "def 2") in app  # in the def task's thread
    plain_name = (
        "tests.test_logs.test_records_say_which_job_and_attempt_they_are_about.<locals>.plain"
    )
    assert (plain_id, plain_name, 1, "plain 3") in app
    ours = kept.about("errands.jobs")
    assert any(f[:3] == (flaky_id, "flaky", 1) and "retrying" in f[3] for f in ours)
    assert any(f[:3] == (flaky_id, "flaky", 2) and "succeeded" in f[3] for f in ours)
    # Outside a job, the filter gives None: a format with %(job_id)s never fails.
    app_log.info("no job")
    assert kept.about("app")[-1] == (None, None, None, "no job")


def test_errands_own_records_carry_the_fields_without_the_filter(url: str) -> None:
    records: list[logging.LogRecord] = []

    class Plain(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Plain()
    logging.getLogger("errands.jobs").addHandler(handler)
    try:
        errands = Errands(url)

        @errands.task(name="bad")
        def bad() -> None:
            raise ValueError("no")

        async def main() -> str:
            async with errands.lifespan():
                id = errands.add_task(bad).id
                await errands.join(timeout=20)
                return id

        id = asyncio.run(main())
    finally:
        logging.getLogger("errands.jobs").removeHandler(handler)
    [failure] = [r for r in records if r.levelno == logging.ERROR]
    assert (failure.job_id, failure.task, failure.attempt) == (id, "bad", 1)  # type: ignore[attr-defined]


def test_async_attempts_in_a_celery_workers_thread_each_see_their_own_job() -> None:
    """Celery runs attempts through attempt_blocking: an async task runs on a loop kept
    per thread, and each attempt must see its own job's fields, not the first one's."""
    from errands._attempt import attempt_blocking
    from errands._cancel import Stop
    from errands._logs import _CURRENT

    errands = Errands("memory://")
    seen: list[Any] = []

    @errands.task(name="look")
    async def look() -> None:
        seen.append(_CURRENT.get())

    for n in range(3):
        attempt_blocking(look, [], {}, failures=0, max_result=10**6, stop=Stop(), job=(f"j{n}", 1))
    assert seen == [("j0", "look", 1), ("j1", "look", 1), ("j2", "look", 1)]
