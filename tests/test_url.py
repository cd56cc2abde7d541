"""Choosing the store with a URL."""

import pytest

from errands import ConfigurationError, Errands
from errands.memory import MemoryStore


def test_memory_url_gives_the_memory_store() -> None:
    assert isinstance(Errands("memory://")._core.backend.store, MemoryStore)


def test_the_url_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRANDS_URL", "memory://")
    errands = Errands()
    assert errands.url == "memory://" and isinstance(errands._core.backend.store, MemoryStore)


@pytest.mark.parametrize("url", ["redis://localhost", "nonsense"])
def test_an_invalid_url_fails_at_construction_listing_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"invalid errands URL.*memory://.*sqlite:///"):
        Errands(url)


def test_the_memory_store_takes_no_options() -> None:
    with pytest.raises(ConfigurationError, match="use 'memory://'"):
        Errands("memory://x?y=1")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("concurrency", 0),
        ("threads", 0),
        ("max_backlog", -1),
        ("lease", 0),
        ("drain_timeout", -1),
        # Found by trying: each was accepted, and broke later (a hang, jobs failed as
        # corrupt, a worker looping on an error).
        ("lease", float("inf")),
        ("lease", 1e12),
        ("lease", 0.001),
        ("hold", float("nan")),
        ("concurrency", 1.5),
        ("threads", "4"),
        ("worker", 0),
        ("only_registered", "yes"),
        ("eager", "yes"),
        ("retention", float("inf")),
    ],
)
def test_bad_options_fail_at_construction(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Errands("memory://", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        ("timeout", 1e12),
        ("backoff", float("nan")),
        ("backoff", float("inf")),
        ("retries", True),
    ],
)
def test_bad_task_policies_fail_at_decoration(option: str, value: object) -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError, match=option):
        errands.task(**{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///:memory:", "use memory://"),
        ("sqlite:///file:jobs?mode=memory", "sqlite:///jobs.db"),
        ("sqlite:///jobs\x00.db", "give a file's path"),
        ("", "must be a non-empty str"),
        (123, "must be a non-empty str"),
    ],
)
def test_urls_that_cannot_work_are_refused_with_the_fix(url: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Errands(url)  # type: ignore[arg-type]
