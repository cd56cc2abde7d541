"""Arguments and results travel as JSON: what cannot travel unchanged is refused with
an ErrandsError that names the task and the place, never a raw Python error."""

import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from errands import Errands, ErrandsError, JobStatus, NotSerializable, Task
from errands._payload import encode_result
from errands._tuning import MAX_DEPTH
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


# -- any value: accepted and delivered unchanged, or refused with an ErrandsError ------


def same(expected: Any, got: Any) -> bool:
    """``got`` is ``expected`` as JSON data, exactly: tuples arrive as lists, -0.0 stays
    -0.0, True is not 1, and a nan is never the same as anything."""
    if isinstance(expected, list | tuple):
        return (
            type(got) is list
            and len(got) == len(expected)
            and all(same(a, b) for a, b in zip(expected, got, strict=True))
        )
    if isinstance(expected, dict):
        return (
            type(got) is dict
            and all(type(key) is str for key in expected)
            and expected.keys() == got.keys()
            and all(same(expected[key], got[key]) for key in expected)
        )
    if isinstance(expected, float):
        return type(got) is float and got == expected and str(got) == str(expected)
    scalar = type(expected) in (str, int, bool, type(None))
    return scalar and type(got) is type(expected) and got == expected


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest in ``value`` more than ``limit`` levels (stops there)."""
    if not isinstance(value, list | tuple | dict):
        return False
    if limit == 0:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(deeper_than(item, limit - 1) for item in items)


def json_carries(value: Any) -> bool:
    """Whether JSON carries ``value`` unchanged (the reference errands is held to)."""
    if deeper_than(value, MAX_DEPTH):
        return False
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):  # not JSON data, nan, an int of too many digits
        return False
    return same(value, json.loads(text))


HUGE_INTS = st.one_of(
    st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64]),
    # Ints of 4,300 digits (the default limit) and more; built, since hypothesis
    # describes a strategy with repr(), which such an int refuses.
    st.builds(
        lambda sign, digits, offset: sign * (10**digits + offset),
        st.sampled_from([1, -1]),
        st.sampled_from([4299, 4300, 5000]),
        st.sampled_from([-1, 0]),
    ),
)
HASHABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=3),
    st.tuples(st.integers()),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0]),  # more often than floats()
    st.text(st.characters(exclude_categories=()), max_size=8),  # lone surrogates too
    st.text(st.characters(min_codepoint=0x10000), max_size=4),  # astral characters
    st.binary(max_size=4),
    st.datetimes(),
    st.dates(),
    st.builds(object),
)
LEAVES = st.one_of(
    SCALARS,
    st.builds(nested, SCALARS, st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH, 100_000])),
    st.builds(containing_itself, st.lists(SCALARS, max_size=2)),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), children, max_size=4),
        st.dictionaries(HASHABLE, children, max_size=3),
        st.sets(HASHABLE, max_size=3),
    ),
    max_leaves=8,
)


@pytest.fixture
def keeper(url: str) -> tuple[Errands, Task[[Any], Any], list[Any]]:
    """An Errands instance whose task ``keep`` records and returns what it receives."""
    errands = Errands(url)
    received: list[Any] = []

    @errands.task
    def keep(value: Any) -> Any:
        received.append(value)
        return value

    return errands, keep, received


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    # One Errands instance serves every example of a test, as it would serve requests.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=VALUES)
async def test_any_value_arrives_as_json_gives_it_back_or_is_refused_with_an_errands_error(
    keeper: tuple[Errands, Task[[Any], Any], list[Any]], value: Any
) -> None:
    errands, keep, received = keeper
    carried = json_carries(value)
    try:
        job = errands.add_task(keep, value)
    except ErrandsError as exc:
        event("refused")
        assert not carried, f"refused what JSON carries unchanged: {exc}"
        assert isinstance(exc, NotSerializable)
        return
    assert carried, "accepted what JSON cannot carry unchanged"
    event("accepted")
    expected = json.loads(json.dumps(value))
    await errands.join(timeout=10)
    record = await job.wait(timeout=5)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert same(expected, received.pop())
    assert same(expected, record.result)
