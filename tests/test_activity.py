"""The last hour as ``stats().activity`` tells it (the dashboard's chart and its
"failing" list): the SQLite store counts it in SQL, the memory store (and Celery mode)
from the records; both must tell the same story of the same jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errands import JobRecord, JobStatus
from errands._stats import TIMELINE, activity, timeline_start
from errands.sqlite import SQLiteStore

# Half a minute and a bit into a minute: no time below falls on a minute's edge.
NOW = datetime(2026, 11, 30, 12, 0, 30, 500_000, tzinfo=UTC)


def at(seconds_ago: int) -> datetime:
    return NOW - timedelta(seconds=seconds_ago, milliseconds=370)


@st.composite
def jobs(draw: st.DrawFn) -> JobRecord:
    status = draw(st.sampled_from(list(JobStatus)))
    created = draw(st.integers(0, 2 * 3600))
    started = finished = None
    if status is not JobStatus.QUEUED and not (
        status is JobStatus.CANCELLED and draw(st.booleans())  # cancelled before it ran
    ):
        started = draw(st.integers(0, created))
    if status.finished:
        finished = draw(st.integers(0, created if started is None else started))
    return JobRecord(
        id=uuid.uuid4().hex,
        name=draw(st.sampled_from(["mail", "report"])),
        status=status,
        created_at=at(created),
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished),
        run_at=at(created)
        if draw(st.booleans())
        else NOW + timedelta(seconds=draw(st.integers(1, 9))),
        attempts=0 if started is None else 1,
    )


def test_the_timeline_is_sixty_whole_minutes_ending_with_the_current_one() -> None:
    told = activity([], NOW)
    assert len(told.timeline) == TIMELINE == 60
    assert told.timeline[-1].start == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert (
        told.timeline[0].start
        == timeline_start(NOW)
        == NOW.replace(hour=11, minute=1, second=0, microsecond=0)
    )
    assert all(m.succeeded == m.failed == m.queued == 0 for m in told.timeline)


def test_a_job_counts_where_it_waited_and_where_it_ended() -> None:
    waited = JobRecord(
        id="a",
        name="mail",
        status=JobStatus.FAILED,
        created_at=NOW - timedelta(minutes=10, seconds=5),
        started_at=NOW - timedelta(minutes=7, seconds=5),
        finished_at=NOW - timedelta(minutes=2, seconds=5),
    )
    still = JobRecord(
        id="b",
        name="report",
        created_at=NOW - timedelta(hours=3),
        run_at=NOW - timedelta(hours=2),  # due for two hours (a retry, say)
    )
    later = JobRecord(id="c", name="report", created_at=NOW, run_at=NOW + timedelta(days=1))
    told = activity([waited, still, later], NOW)
    queued = [m.queued for m in told.timeline]
    assert queued[:49] == [1] * 49  # only the job added three hours ago
    assert queued[49:52] == [2, 2, 2]  # the other waited from 11:50 to 11:53
    assert queued[52:59] == [1] * 7
    assert queued[59] == 2  # the job delayed to tomorrow is queued too (though not due)
    assert [m.failed for m in told.timeline].index(1) == 57
    assert told.failing == {"mail": 1}
    assert told.oldest_queued == still.run_at  # the one delayed to tomorrow is not due


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(jobs(), max_size=40))
def test_the_sqlite_store_counts_what_the_records_say(
    tmp_path: Path, records: list[JobRecord]
) -> None:
    store = SQLiteStore(str(tmp_path / f"{uuid.uuid4().hex}.db"))
    try:
        store.enqueue(records)
        counted = store.activity(NOW)
    finally:
        store.close()
    expected = activity(records, NOW)
    assert counted.timeline == expected.timeline
    assert counted.failing == expected.failing
    assert counted.finished == expected.finished
    assert counted.oldest_queued == expected.oldest_queued
    assert counted.run_times.keys() == expected.run_times.keys()
    for name, times in expected.run_times.items():
        got = counted.run_times[name]
        assert got.count == times.count
        assert (got.p50, got.p95) == pytest.approx((times.p50, times.p95), abs=1e-5)
