"""Registered tasks: retries, backoff, timeouts, JSON arguments and results."""

import asyncio
import datetime
import threading
import time
from typing import Any

import pytest

from errands import (
    ConfigurationError,
    Errands,
    InvalidArguments,
    JobStatus,
    NotSerializable,
    TaskTimeout,
)
from errands._policy import Policy

pytestmark = pytest.mark.anyio


async def test_a_first_time_success_has_one_attempt_and_a_json_result(url: str) -> None:
    errands = Errands(url)

    @errands.task
    async def answer() -> int:
        return 42

    job = errands.add_task(answer)
    await errands.join(timeout=5)
    record = await job.wait(timeout=5)
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts == 1 and record.result == 42
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at


async def test_retries_n_allows_n_plus_one_attempts_then_fails(url: str) -> None:
    errands = Errands(url)
    calls: list[int] = []

    @errands.task(retries=2, backoff=0.01)
    def always_fails() -> None:
        calls.append(1)
        raise ValueError(f"attempt {len(calls)}")

    job = errands.add_task(always_fails)
    await errands.join(timeout=5)
    record = await job.wait(timeout=1)
    assert len(calls) == 3
    assert record.status is JobStatus.FAILED and record.attempts == 3
    assert record.max_attempts == 3
    assert record.error == "ValueError: attempt 3"


async def test_a_task_that_succeeds_on_retry_records_the_attempts(url: str) -> None:
    errands = Errands(url)
    calls: list[int] = []

    @errands.task(retries=3, backoff=0.01)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")
        return "ok"

    job = errands.add_task(flaky)
    await errands.join(timeout=5)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts == 3 and record.result == "ok"


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = Policy(retries=5, backoff=0.5)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0)]:
        delays = [policy.delay_before_retry(attempt) for _ in range(300)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling * 0.8  # spread out
        assert min(d for d in delays if d is not None) < ceiling * 0.2
    assert policy.delay_before_retry(6) is None  # no attempt left


async def test_backoff_spaces_the_attempts(url: str) -> None:
    errands = Errands(url)
    times: list[float] = []

    @errands.task(retries=1, backoff=0.3)
    async def fails_once() -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            raise ValueError

    errands.add_task(fails_once)
    await errands.join(timeout=5)
    assert len(times) == 2
    assert times[1] - times[0] <= 0.3 + 0.25  # jitter draws in [0, backoff]


async def test_an_async_task_past_its_timeout_is_cancelled_and_says_so(url: str) -> None:
    errands = Errands(url)
    cancelled = asyncio.Event()

    @errands.task(timeout=0.1)
    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = errands.add_task(hangs)
    await errands.join(timeout=5)
    record = await job.wait(timeout=1)
    assert cancelled.is_set()
    assert record.status is JobStatus.FAILED
    assert record.error == f"TaskTimeout: task '{hangs.name}' timed out after 0.1 s"


async def test_a_sync_task_past_its_timeout_is_abandoned_and_reported(url: str) -> None:
    errands = Errands(url, threads=2)
    gate = threading.Event()

    @errands.task(timeout=0.1, retries=1, backoff=0)
    def blocks() -> None:
        gate.wait(10)

    job = errands.add_task(blocks)
    await errands.join(timeout=5)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.FAILED and record.attempts == 2
    assert record.error is not None and "timed out after 0.1 s" in record.error
    gate.set()


def test_timeout_error_type_is_an_errands_error() -> None:
    assert issubclass(TaskTimeout, Exception)


async def test_a_task_raising_its_own_timeout_error_is_not_mistaken_for_a_timeout(url: str) -> None:
    errands = Errands(url)

    @errands.task(timeout=5)
    async def raises_timeout() -> None:
        raise TimeoutError("upstream")

    job = errands.add_task(raises_timeout)
    await errands.join(timeout=5)
    assert (await job.wait(1)).error == "TimeoutError: upstream"


def test_arguments_that_are_not_json_are_refused_naming_task_argument_and_type(url: str) -> None:
    errands = Errands(url)

    @errands.task(name="emails.send")
    def send(to: str, when: Any = None, meta: Any = None) -> None: ...

    with pytest.raises(NotSerializable) as caught:
        errands.add_task(send, "a@b.c", when=datetime.date(2026, 1, 1))
    message = str(caught.value)
    assert "'emails.send'" in message and "'when'" in message
    assert "datetime.date" in message and "isoformat" in message

    with pytest.raises(NotSerializable, match=r"'meta'\['ids'\]\[1\] is a builtins.object"):
        errands.add_task(send, "a@b.c", meta={"ids": [1, object()]})
    with pytest.raises(NotSerializable, match="key 1 of type int"):
        errands.add_task(send, "a@b.c", meta={1: "x"})
    with pytest.raises(NotSerializable, match="nan"):
        errands.add_task(send, "a@b.c", meta=float("nan"))
    assert errands.jobs() == []  # nothing half-added


def test_arguments_that_do_not_fit_the_signature_are_refused(url: str) -> None:
    errands = Errands(url)

    @errands.task
    def send(to: str) -> None: ...

    with pytest.raises(InvalidArguments, match=r"send.*missing a required argument: 'to'"):
        errands.add_task(send)  # type: ignore[call-arg]
    assert isinstance(InvalidArguments("x"), TypeError)


def test_the_quick_argument_check_never_accepts_what_the_signature_refuses() -> None:
    import inspect
    import itertools

    errands = Errands("memory://")

    def none() -> None: ...
    def two(a: int, b: int) -> None: ...
    def default(a: int, b: int = 1, c: int = 2) -> None: ...
    def star(a: int, *rest: int) -> None: ...
    def keyword(a: int, *, b: int) -> None: ...
    def positional(a: int, /, b: int) -> None: ...
    def anything(**kw: int) -> None: ...

    calls_args = [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]
    calls_kwargs: list[dict[str, Any]] = [{}, {"a": 1}, {"b": 2}, {"c": 3}, {"b": 2, "c": 3}]
    calls_kwargs += [{"d": 4}, {"a": 1, "b": 2}]
    for func in (none, two, default, star, keyword, positional, anything):
        task = errands.task(name=func.__name__)(func)
        quick = 0
        for args, kwargs in itertools.product(calls_args, calls_kwargs):
            try:
                inspect.signature(func).bind(*args, **kwargs)
                binds = True
            except TypeError:
                binds = False
            if task.accepts(args, kwargs):
                quick += 1
                assert binds, (func.__name__, args, kwargs)
            if not binds:
                with pytest.raises(InvalidArguments):
                    errands.add_task(task, *args, **kwargs)
        # Plain signatures are checked quickly; the others always by the signature.
        assert (quick > 0) == (func in (none, two, default))


async def test_plain_arguments_are_kept_exactly_and_odd_ones_go_through_json(url: str) -> None:
    errands = Errands(url)
    got: list[Any] = []

    @errands.task
    def keep(*args: Any, **kwargs: Any) -> None:
        got.append((args, kwargs))

    @errands.task
    def plain(a: Any, b: Any, c: Any = None, d: Any = None, e: Any = None) -> None:
        got.append(((a, b, c, d, e), {}))

    text = 'é\U0001f600\ud800"\n'  # escapes that grow in JSON
    errands.add_task(plain, text, 2**63 - 1, c=-1.5e300, d=True, e=None)
    await errands.join(timeout=5)
    errands.add_task(keep, 2**64, x=[1])  # a huge int and a list take the JSON path
    await errands.join(timeout=5)
    assert got == [((text, 2**63 - 1, -1.5e300, True, None), {}), ((2**64,), {"x": [1]})]
    with pytest.raises(NotSerializable, match="inf"):
        errands.add_task(plain, float("inf"), 1)


async def test_arguments_arrive_as_json_gives_them(url: str) -> None:
    errands = Errands(url)
    got: list[Any] = []

    @errands.task
    def keep(items: Any, mapping: Any) -> None:
        got.append((items, mapping))

    payload = {"nested": [1, 2]}
    errands.add_task(keep, (1, "a"), payload)
    payload["nested"].append(3)  # the job does not see later changes
    await errands.join(timeout=5)
    assert got == [([1, "a"], {"nested": [1, 2]})]


async def test_a_result_that_is_not_json_fails_the_job_with_a_clear_error(url: str) -> None:
    errands = Errands(url)

    @errands.task(retries=3)
    def gives_object() -> object:
        return object()

    job = errands.add_task(gives_object)
    await errands.join(timeout=5)
    record = await job.wait(1)
    assert record.status is JobStatus.FAILED and record.attempts == 1  # not retried
    assert record.error is not None and "the result is a builtins.object" in record.error


def test_a_registered_task_called_directly_is_the_plain_function(url: str) -> None:
    errands = Errands(url)

    @errands.task(retries=3)
    def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert double(21) == 42
    assert double.__name__ == "double" and double.__doc__ == "Doubles."
    assert errands.jobs() == []


async def test_an_async_registered_task_called_directly_returns_its_coroutine(url: str) -> None:
    errands = Errands(url)

    @errands.task
    async def double(x: int) -> int:
        return 2 * x

    assert await double(21) == 42


def test_task_names_default_to_module_and_qualname_and_must_be_unique(url: str) -> None:
    errands = Errands(url)

    @errands.task
    def one() -> None: ...

    test_name = "test_task_names_default_to_module_and_qualname_and_must_be_unique"
    assert one.name == f"{__name__}.{test_name}.<locals>.one"
    assert errands._core.tasks[one.name] is one

    @errands.task(name="custom")
    def two() -> None: ...

    with pytest.raises(ConfigurationError, match="'custom' is already registered"):

        @errands.task(name="custom")
        def three() -> None: ...


def test_bad_policies_are_refused(url: str) -> None:
    errands = Errands(url)
    with pytest.raises(ConfigurationError, match="retries"):
        errands.task(retries=-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        errands.task(timeout=0)
    with pytest.raises(ConfigurationError, match="backoff"):
        errands.task(backoff=-1)


def test_a_task_of_another_instance_is_refused_by_add_task() -> None:
    first, second = Errands("memory://"), Errands("memory://")

    @first.task
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match="another Errands instance"):
        second.add_task(job)


async def test_a_job_whose_task_no_worker_knows_waits_and_is_reported(url: str) -> None:
    from errands import JobRecord

    errands = Errands(url)

    @errands.task(name="known")
    def known() -> str:
        return "ran"

    # As a worker of an older deploy finds a new task's job: it must leave it alone.
    errands._core.backend.store.enqueue(
        [JobRecord(id="x1", name="nobody.knows", run_at=datetime.datetime.now(datetime.UTC))]
    )
    async with errands.lifespan():
        assert (await errands.add_task(known).wait(timeout=10)).result == "ran"
        await asyncio.sleep(0.2)  # polls that could have taken it
        stats = errands.stats()
    record = errands.get("x1")
    assert record is not None and record.status is JobStatus.QUEUED and record.attempts == 0
    assert stats.unrunnable == {"nobody.knows": 1}
    assert [w.tasks for w in stats.workers] == [("known",)]


async def test_a_task_that_changes_its_arguments_does_not_change_later_ones(url: str) -> None:
    errands = Errands(url)
    seen: list[list[int]] = []

    @errands.task(retries=1, backoff=0)
    def consume(batch: list[int]) -> None:
        seen.append(list(batch))
        batch.clear()
        if len(seen) == 1:
            raise ValueError("first attempt fails")

    job = errands.add_task(consume, [1, 2, 3])
    await errands.join(timeout=5)
    assert seen == [[1, 2, 3], [1, 2, 3]]
    record = job.info()
    assert record is not None and record.args == [[1, 2, 3]]


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_task_name_is_refused(name: str) -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError, match="non-empty str"):
        errands.task(name=name)(lambda: None)


def test_a_task_name_that_is_not_valid_text_is_refused() -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        errands.task(name="send-\udcff")(lambda: None)


async def test_an_error_no_store_can_hold_is_recorded_escaped_after_one_attempt(url: str) -> None:
    import os

    errands = Errands(url)
    runs: list[int] = []

    @errands.task(retries=1, backoff=0)
    def report() -> None:
        runs.append(1)
        raise FileNotFoundError(os.fsdecode(b"report-\xff.csv"))

    job = errands.add_task(report)
    await errands.join(timeout=10)
    record = errands.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error == "FileNotFoundError: report-\\udcff.csv"
    assert record.traceback is not None and "report-\\udcff.csv" in record.traceback
    assert len(runs) == 2 and record.attempts == 2  # its retries, and never a run more


async def test_a_result_over_max_result_fails_the_job_naming_the_limit(url: str) -> None:
    errands = Errands(url, max_result=1000)
    runs: list[int] = []

    @errands.task(retries=3)
    def big() -> str:
        runs.append(1)
        return "x" * 5000

    job = errands.add_task(big)
    await errands.join(timeout=10)
    record = errands.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.startswith("ResultTooLarge:")
    assert "max_result=1,000" in record.error or "max_result=1000" in record.error
    assert runs == [1] and record.attempts == 1  # no retry mends it


async def test_a_worker_logs_each_outcome_with_the_job_task_attempt_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    errands = Errands("memory://")
    attempts: list[int] = []

    @errands.task(name="mail", retries=2, backoff=0.01)
    def mail() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("smtp down")
        return "sent"

    @errands.task(name="broken")
    def broken() -> None:
        raise ValueError("bad input")

    caplog.set_level(logging.INFO, "errands")
    ok, bad = errands.add_task(mail), errands.add_task(broken)
    await errands.join(timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "errands.jobs"]
    assert any(
        line.startswith(f"job {ok.id} (mail) attempt 1 of 3 failed: ConnectionError: smtp down; ")
        and "retrying in" in line
        for line in lines
    ), lines
    assert any(
        line.startswith(f"job {ok.id} (mail) succeeded in ") and line.endswith("(attempt 2 of 3)")
        for line in lines
    ), lines
    assert f"job {bad.id} (broken) failed: ValueError: bad input" in lines
    failure = next(r for r in caplog.records if r.getMessage().startswith(f"job {bad.id}"))
    assert failure.levelname == "ERROR" and failure.exc_info is not None  # with its traceback
    assert not any(r.getMessage().startswith("errands:") for r in caplog.records)
