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
    [("concurrency", 0), ("threads", 0), ("max_backlog", -1), ("lease", 0), ("drain_timeout", -1)],
)
def test_bad_options_fail_at_construction(option: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Errands("memory://", **{option: value})  # type: ignore[arg-type]
