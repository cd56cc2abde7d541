"""What every Store must do, run against every store."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from errands import JobRecord, JobStatus, Store
from errands.memory import MemoryStore
from errands.sqlite import SQLiteStore

STORES = ["memory", "sqlite"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "j.db")
    yield made
    made.close()


def now() -> datetime:
    return datetime.now(UTC)


def job(id: str, *, held: bool = False, after: str | None = None, **kw: object) -> JobRecord:
    return JobRecord(id=id, name="t", run_at=None if held else now(), after=after, **kw)  # type: ignore[arg-type]


def test_enqueued_jobs_can_be_read_back_as_copies(store: Store) -> None:
    store.enqueue([job("a", args=[1], kwargs={"k": "v"})])
    record = store.get("a")
    assert record is not None and record.args == [1] and record.kwargs == {"k": "v"}
    record.status = JobStatus.FAILED
    again = store.get("a")
    assert again is not None and again.status is JobStatus.QUEUED
    assert store.get("missing") is None


def test_claim_marks_running_counts_an_attempt_and_sets_a_lease(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w1", 10, lease=30)
    assert claimed.status is JobStatus.RUNNING and claimed.attempts == 1
    assert claimed.owner == "w1" and claimed.lease_until is not None
    assert claimed.lease_until > now() + timedelta(seconds=25)
    assert store.claim("w2", 10, lease=30) == []  # a job is claimed once


def test_claim_respects_the_limit_and_fifo_order(store: Store) -> None:
    store.enqueue([job(f"j{i}") for i in range(5)])
    first = store.claim("w", 2, lease=30)
    rest = store.claim("w", 10, lease=30)
    assert [j.id for j in first] == ["j0", "j1"]
    assert [j.id for j in rest] == ["j2", "j3", "j4"]


def test_held_jobs_wait_for_release(store: Store) -> None:
    store.enqueue([job("a", held=True)])
    assert store.claim("w", 10, lease=30) == []
    store.release(["a"])
    assert [j.id for j in store.claim("w", 10, lease=30)] == ["a"]


def test_jobs_not_yet_due_are_not_claimed(store: Store) -> None:
    store.enqueue([JobRecord(id="later", name="t", run_at=now() + timedelta(seconds=60))])
    assert store.claim("w", 10, lease=30) == []


def test_a_job_waits_for_the_one_added_before_it_to_finish(store: Store) -> None:
    store.enqueue([job("first"), job("second", after="first"), job("third", after="second")])
    [first] = store.claim("w", 10, lease=30)
    assert first.id == "first"
    assert store.claim("w", 10, lease=30) == []
    assert store.fail(first, "E: x", None)  # failure also lets the next one go
    [second] = store.claim("w", 10, lease=30)
    assert second.id == "second"
    assert store.complete(second, None)
    assert [j.id for j in store.claim("w", 10, lease=30)] == ["third"]


def test_a_job_after_a_cancelled_one_still_runs(store: Store) -> None:
    store.enqueue([job("first", held=True), job("second", after="first")])
    assert store.cancel(["first"], "dropped") == ["first"]
    assert [j.id for j in store.claim("w", 10, lease=30)] == ["second"]


def test_complete_records_the_result(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 1, lease=30)
    assert store.complete(claimed, {"answer": 42})
    record = store.get("a")
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result == {"answer": 42} and record.finished_at is not None
    assert record.owner is None and record.lease_until is None


def test_retry_requeues_at_the_given_time(store: Store) -> None:
    store.enqueue([job("a", max_attempts=3)])
    [claimed] = store.claim("w", 1, lease=30)
    assert store.retry(claimed, "E: boom", "tb", now() + timedelta(seconds=0.2))
    record = store.get("a")
    assert record is not None and record.status is JobStatus.QUEUED and record.error == "E: boom"
    assert store.claim("w", 1, lease=30) == []
    time.sleep(0.25)
    [again] = store.claim("w", 1, lease=30)
    assert again.attempts == 2


def test_an_expired_lease_makes_the_job_claimable_as_a_new_attempt(store: Store) -> None:
    store.enqueue([job("a")])
    [lost] = store.claim("dead-worker", 1, lease=0.1)
    time.sleep(0.15)
    [again] = store.claim("w2", 1, lease=30)
    assert again.id == "a" and again.attempts == 2 and again.owner == "w2"
    # The dead worker's late report is refused; the live claim is untouched.
    assert not store.complete(lost, "late")
    assert not store.fail(lost, "late", None)
    assert store.heartbeat([lost], 30) == ["a"]
    assert store.complete(again, "ok")


def test_heartbeat_keeps_a_lease_alive(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 1, lease=0.2)
    for _ in range(3):
        time.sleep(0.1)
        assert store.heartbeat([claimed], 0.2) == []
    assert store.claim("other", 1, lease=30) == []


def test_requeue_gives_the_job_back_without_spending_an_attempt(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 1, lease=30)
    assert store.requeue(claimed)
    [again] = store.claim("w", 1, lease=30)
    assert again.attempts == 1


def test_claim_by_id_takes_held_jobs_for_the_eager_path(store: Store) -> None:
    store.enqueue([job("a", held=True), job("b", held=True)])
    assert [j.id for j in store.claim("w", 10, lease=30, ids=["b"])] == ["b"]


def test_cancel_only_touches_queued_jobs(store: Store) -> None:
    store.enqueue([job("a"), job("b")])
    [running] = store.claim("w", 1, lease=30)
    assert store.cancel(["a", "b"], "reason") == ["b"]
    record = store.get("b")
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.error == "reason"
    assert running.id == "a"


def test_listing_is_newest_first_and_filters_by_status(store: Store) -> None:
    store.enqueue([job("a"), job("b"), job("c")])
    [a] = store.claim("w", 1, lease=30)
    store.complete(a, None)
    assert [j.id for j in store.jobs()] == ["c", "b", "a"]
    assert [j.id for j in store.jobs(JobStatus.QUEUED, limit=1)] == ["c"]
    counts = store.counts()
    assert counts[JobStatus.QUEUED] == 2 and counts[JobStatus.SUCCEEDED] == 1
    assert counts[JobStatus.RUNNING] == 0
    assert store.unfinished() == 2
    store.claim("w", 1, lease=30)
    store.cancel(["c", "b"], "no")  # one queued, one running: only the queued one goes
    assert store.unfinished() == 1


def test_the_memory_store_keeps_a_bounded_number_of_finished_jobs() -> None:
    store = MemoryStore(keep_finished=3)
    for i in range(10):
        store.enqueue([job(f"j{i}")])
        [claimed] = store.claim("w", 1, lease=30)
        store.complete(claimed, i)
    assert [j.id for j in store.jobs()] == ["j9", "j8", "j7"]
    assert store.get("j0") is None


def test_a_lost_attempt_does_not_count_against_retries_but_poison_jobs_fail(store: Store) -> None:
    store.enqueue([job("a", max_attempts=1)])
    for lost in range(1, 6):
        [claimed] = store.claim(f"dies-{lost}", 1, lease=0.01)
        assert claimed.attempts == lost and claimed.lost == lost - 1
        assert claimed.failures == 1  # the running attempt; the dead ones do not count
        time.sleep(0.03)
    assert store.claim("w", 1, lease=30) == []
    record = store.get("a")
    assert record is not None and record.status is JobStatus.FAILED
    assert record.lost == 5 and record.error is not None and "PoisonJob" in record.error
    assert record.finished_at is not None


def test_purge_deletes_only_jobs_finished_before_the_cutoff(store: Store) -> None:
    store.enqueue([job("old"), job("new"), job("waiting", held=True)])
    for claimed in store.claim("w", 2, lease=30):
        store.complete(claimed, None)
    assert store.purge(now() - timedelta(seconds=60)) == 0
    assert store.purge(now() + timedelta(seconds=1)) == 2
    assert store.get("old") is None and store.get("new") is None
    assert store.get("waiting") is not None
