"""Arguments and results travel as JSON: what cannot travel unchanged is refused with
an ErrandsError that names the task and the place, never a raw Python error."""

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from errands import Errands, ErrandsError, JobStatus, NotSerializable
from errands._payload import MAX_DEPTH, encode_result
from errands.exceptions import ResultTooLarge

pytestmark = pytest.mark.anyio


def nested(leaf: Any, depth: int) -> Any:
    """``leaf`` inside ``depth`` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def containing_itself(items: list[Any]) -> list[Any]:
    items = list(items)
    items.append(items)
    return items


@pytest.fixture
def int_digits() -> Iterator[None]:
    """Lets a test change the interpreter's int digit limit; puts it back after."""
    limit = sys.get_int_max_str_digits()
    yield
    sys.set_int_max_str_digits(limit)


# -- data nested too deep ------------------------------------------------------------


async def test_a_list_nested_100000_deep_is_refused_naming_task_and_argument(url: str) -> None:
    errands = Errands(url)

    @errands.task(name="reports.build")
    def build(rows: Any, options: Any = None) -> None: ...

    deep = nested([], 100_000)
    with pytest.raises(NotSerializable) as caught:
        errands.add_task(build, deep)
    message = str(caught.value)
    assert "'reports.build'" in message and "argument 'rows'" in message
    assert f"more than {MAX_DEPTH} levels deep" in message and "flatten it" in message

    with pytest.raises(NotSerializable, match=r"argument 'options' nests .* \(at argument "):
        errands.add_task(build, [], options={"tree": deep})
    assert errands.jobs() == []  # nothing half-added


async def test_data_nested_to_the_limit_arrives_and_one_level_more_is_refused(url: str) -> None:
    errands = Errands(url)
    got: list[Any] = []

    @errands.task
    def keep(value: Any) -> None:
        got.append(value)

    errands.add_task(keep, nested((1, {"a": None}), MAX_DEPTH - 2))  # the dict: level 256
    await errands.join(timeout=10)
    assert got == [nested([1, {"a": None}], MAX_DEPTH - 2)]
    with pytest.raises(NotSerializable, match=f"more than {MAX_DEPTH} levels"):
        errands.add_task(keep, nested((1, {"a": []}), MAX_DEPTH - 2))


def test_data_that_contains_itself_is_refused_naming_where(url: str) -> None:
    errands = Errands(url)

    @errands.task
    def keep(value: Any) -> None: ...

    loop: dict[str, Any] = {"name": "x", "children": []}
    loop["children"].append(loop)
    with pytest.raises(
        NotSerializable,
        match=r"argument 'value'\['children'\]\[0\] is argument 'value' itself",
    ):
        errands.add_task(keep, loop)


async def test_a_result_nested_too_deep_fails_the_job_without_retrying(url: str) -> None:
    errands = Errands(url)

    @errands.task(retries=2, backoff=0.01)
    def deep() -> Any:
        return nested("leaf", 100_000)

    @errands.task(retries=2, backoff=0.01)
    def cyclic() -> Any:
        return containing_itself([1])

    jobs = [errands.add_task(deep), errands.add_task(cyclic)]
    await errands.join(timeout=10)
    deep_record, cyclic_record = [await job.wait(timeout=5) for job in jobs]
    for record in (deep_record, cyclic_record):
        assert record.status is JobStatus.FAILED and record.attempts == 1
        assert record.error is not None and record.error.startswith("NotSerializable: ")
    assert deep_record.error is not None and "the result nests" in deep_record.error
    assert cyclic_record.error is not None and "the result[1] is the result" in cyclic_record.error


def test_a_result_is_checked_for_depth_up_to_the_limit() -> None:
    assert encode_result("t", nested(0, MAX_DEPTH)) == nested(0, MAX_DEPTH)
    with pytest.raises(NotSerializable, match=f"task 't': the result nests .* {MAX_DEPTH} levels"):
        encode_result("t", nested(0, MAX_DEPTH + 1))


# -- ints past the interpreter's digit limit -------------------------------------------


async def test_an_int_past_the_digit_limit_is_refused_with_a_hint(url: str) -> None:
    errands = Errands(url)
    got: list[Any] = []

    @errands.task(name="math.keep")
    def keep(value: Any) -> None:
        got.append(value)

    for huge in (10**5000, -(10**5000), 10**4300):
        with pytest.raises(NotSerializable) as caught:
            errands.add_task(keep, huge)
        message = str(caught.value)
        assert "'math.keep'" in message and "argument 'value' is an int of more than" in message
        assert "sys.get_int_max_str_digits()" in message and "hex(value)" in message
    with pytest.raises(NotSerializable, match=r"argument 'value'\[1\]\['n'\] is an int"):
        errands.add_task(keep, [1, {"n": 10**5000}])

    largest = 10**4300 - 1  # 4300 digits: the default limit
    errands.add_task(keep, [largest, -largest])
    await errands.join(timeout=10)
    assert got == [[largest, -largest]]


async def test_the_int_check_follows_the_interpreters_limit(url: str, int_digits: None) -> None:
    errands = Errands(url)
    got: list[Any] = []

    @errands.task
    def keep(value: Any) -> None:
        got.append(value)

    sys.set_int_max_str_digits(1000)
    with pytest.raises(NotSerializable, match="more than 1,000 digits"):
        errands.add_task(keep, 10**1000)
    sys.set_int_max_str_digits(0)  # no limit: JSON carries any int
    errands.add_task(keep, 10**5000)
    await errands.join(timeout=10)
    assert got == [10**5000]


async def test_a_result_past_the_digit_limit_fails_the_job_without_retrying(url: str) -> None:
    errands = Errands(url)

    @errands.task(retries=2, backoff=0.01)
    def huge() -> int:
        return 10**5000

    job = errands.add_task(huge)
    await errands.join(timeout=10)
    record = await job.wait(timeout=5)
    assert record.status is JobStatus.FAILED and record.attempts == 1
    assert record.error is not None and "the result is an int of more than" in record.error


# -- results larger than max_result ----------------------------------------------------


def test_a_result_larger_than_max_result_is_refused_naming_task_size_limit_and_fix() -> None:
    result = {"rows": ["x" * 10] * 10}
    size = len(json.dumps(result, separators=(",", ":")))
    assert encode_result("reports.build", result, max_result=size) == result
    with pytest.raises(ResultTooLarge) as caught:
        encode_result("reports.build", result, max_result=size - 1)
    message = str(caught.value)
    assert "'reports.build'" in message and f"{size:,} bytes" in message
    assert f"max_result={size - 1:,}" in message
    assert "return a reference" in message and "raise max_result" in message
    assert isinstance(caught.value, ErrandsError)
    assert not isinstance(caught.value, NotSerializable)


def test_a_scalar_result_is_measured_as_its_json_bytes() -> None:
    text = "é" * 10  # \u00e9: 6 bytes each as JSON
    assert encode_result("t", text, max_result=62) is text
    with pytest.raises(ResultTooLarge, match="62 bytes as JSON, over max_result=61"):
        encode_result("t", text, max_result=61)
    assert encode_result("t", 7, max_result=1) == 7
    with pytest.raises(ResultTooLarge):
        encode_result("t", 10, max_result=1)
    assert encode_result("t", "x" * 10**6) == "x" * 10**6  # no limit by default


def test_a_short_scalar_result_is_not_encoded_to_be_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("json.dumps was called")

    monkeypatch.setattr(json, "dumps", refuse)
    for result in ("short", 42, 1.5, True, None):
        assert encode_result("t", result, max_result=1024) is result
