"""What every Store must do, run against every store."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from errands import JobRecord, JobStatus
from errands.local import Store
from errands.local._store import ProcessInfo
from errands.memory import MemoryStore
from errands.postgres import PostgresStore, parse_url
from errands.sqlite import SQLiteStore
from tests.conftest import postgres_url

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: What a worker that knows the task "t" asks for.
T = [(("t",), 10)]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "j.db")
    else:
        conninfo, schema, _ = parse_url(postgres_url(request.getfixturevalue("postgres_database")))
        made = PostgresStore(conninfo, schema=schema)
    yield made
    made.close()


def now() -> datetime:
    return datetime.now(UTC)


def job(
    id: str,
    *,
    name: str = "t",
    owner: str | None = None,
    hold: float = 60,
    after: str | None = None,
    **kw: object,
) -> JobRecord:
    """A job as a request adds it: with an ``owner``, it is unreleased for ``hold`` s."""
    run_at = now() + timedelta(seconds=hold) if owner is not None else now()
    return JobRecord(id=id, name=name, run_at=run_at, after=after, owner=owner, **kw)  # type: ignore[arg-type]


def ids(jobs: list[JobRecord]) -> list[str]:
    return [j.id for j in jobs]


def process(id: str, *, role: str = "web", tasks: tuple[str, ...] = ()) -> ProcessInfo:
    started = now()
    return ProcessInfo(id, role, "host", 1234, tasks, started, started)  # type: ignore[arg-type]


def test_enqueued_jobs_can_be_read_back_as_copies(store: Store) -> None:
    store.enqueue([job("a", args=[1], kwargs={"k": "v"})])
    record = store.get("a")
    assert record is not None and record.args == [1] and record.kwargs == {"k": "v"}
    record.status = JobStatus.FAILED
    again = store.get("a")
    assert again is not None and again.status is JobStatus.QUEUED
    assert store.get("missing") is None


def test_a_job_whose_id_is_kept_is_not_added_and_is_returned_the_others_are_added(
    store: Store,
) -> None:
    first = job("a", args=["first"])
    assert store.enqueue([first]) == []
    again, other, twice = job("a", args=["again"]), job("b"), job("b", args=["twice"])
    assert store.enqueue([again, other, twice]) == [again, twice]  # the very records
    kept = store.get("a")
    assert kept is not None and kept.args == ["first"]  # what was kept stands
    b = store.get("b")
    assert b is not None and b.args == []
    assert store.unfinished() == 2
    # A finished job keeps its id too (until it is purged).
    [claimed] = store.claim("w", 30, T, 1)
    assert store.complete(claimed, "done")
    assert store.enqueue([job(claimed.id)]) != []
    assert store.purge(now() + timedelta(seconds=1)) == 1
    assert store.enqueue([job(claimed.id)]) == []


def test_due_jobs_are_claimed_highest_priority_first_then_in_due_order(store: Store) -> None:
    old = job("old")
    old.run_at = now() - timedelta(seconds=5)  # due sooner: first of its priority
    later = now() + timedelta(hours=1)
    store.enqueue(
        [
            job("low", priority=-1),
            job("plain-1"),
            job("high", priority=10),
            job("plain-2"),
            old,
            job("urgent-later", owner="web", priority=50, scheduled_at=later),
            job("also-high", priority=10),
        ]
    )
    store.release(["urgent-later"])  # not due for an hour: priority does not make it due
    order = []
    while claimed := store.claim("w", 30, [(("t",), 2)], 2):
        order += ids(claimed)
    assert order == ["high", "also-high", "old", "plain-1", "plain-2", "low"]
    # Across names, the same order.
    store.enqueue([job("x1", name="x"), job("y1", name="y", priority=3), job("x2", name="x")])
    both = [(("x", "y"), 3)]
    assert ids(store.claim("w", 30, both, 3)) == ["y1", "x1", "x2"]


def test_the_store_says_where_its_jobs_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert MemoryStore().location == "memory"
    store = SQLiteStore("relative.db")
    assert store.location == str(tmp_path / "relative.db")
    store.close()


def test_claim_marks_running_counts_an_attempt_and_sets_a_lease(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w1", 30, T)
    assert claimed.status is JobStatus.RUNNING and claimed.attempts == 1
    assert claimed.owner == "w1" and claimed.lease_until is not None
    assert claimed.lease_until > now() + timedelta(seconds=25)
    assert claimed.started_at is not None
    assert store.claim("w2", 30, T) == []  # a job is claimed once


def test_claim_respects_the_limit_and_fifo_order(store: Store) -> None:
    store.enqueue([job(f"j{i}") for i in range(5)])
    first = store.claim("w", 30, [(("t",), 2)])
    rest = store.claim("w", 30, T)
    assert ids(first) == ["j0", "j1"]
    assert ids(rest) == ["j2", "j3", "j4"]


def test_a_claim_takes_only_the_task_names_it_wants(store: Store) -> None:
    # A rolling deploy: the old worker does not know "new"; it leaves its jobs alone.
    store.enqueue([job("n1", name="new"), job("o1", name="old"), job("n2", name="new")])
    assert ids(store.claim("old-worker", 30, [(("old", "other"), 10)])) == ["o1"]
    assert store.claim("old-worker", 30, [(("old", "other"), 10)]) == []
    assert ids(store.claim("new-worker", 30, [(("old", "new"), 10)])) == ["n1", "n2"]


def test_jobs_of_several_names_are_claimed_in_the_order_they_were_added(store: Store) -> None:
    store.enqueue([job(f"j{i}", name="abc"[i % 3]) for i in range(9)])
    assert ids(store.claim("w", 30, [(("c", "a", "b"), 4)])) == ["j0", "j1", "j2", "j3"]
    assert ids(store.claim("w", 30, [(("a", "c"), 10)])) == ["j5", "j6", "j8"]


def test_each_want_takes_up_to_its_own_limit(store: Store) -> None:
    store.enqueue([job(f"a{i}", name="a") for i in range(3)])
    store.enqueue([job(f"b{i}", name="b") for i in range(3)])
    claimed = store.claim("w", 30, [(("a",), 1), (("b",), 2)])
    assert ids(claimed) == ["a0", "b0", "b1"]
    # A want with no room, or no names, takes nothing.
    assert store.claim("w", 30, [(("a",), 0), ((), 5), (("b",), -1)]) == []
    assert ids(store.claim("w", 30, [(("a",), 5), (("a", "b"), 5)])) == ["a1", "a2", "b2"]


def test_jobs_of_unwanted_names_do_not_hold_back_the_wanted_ones(store: Store) -> None:
    store.enqueue([job(f"busy{i}", name="busy") for i in range(50)])
    store.enqueue([job(f"j{i}", after="busy49" if i == 0 else None) for i in range(3)])
    assert ids(store.claim("w", 30, [(("t",), 10)])) == ["j1", "j2"]  # j0 waits for busy49


def test_unreleased_jobs_keep_their_owner_and_wait_for_release(store: Store) -> None:
    store.enqueue([job("a", owner="web-1"), job("b", owner="web-1")])
    record = store.get("a")
    assert record is not None and record.owner == "web-1" and record.status is JobStatus.QUEUED
    assert store.claim("w", 30, T) == []
    store.release(["a"])
    record = store.get("a")
    assert record is not None and record.owner is None
    assert record.run_at is not None and record.run_at <= now()
    assert ids(store.claim("w", 30, T)) == ["a"]


def test_an_unreleased_job_runs_when_its_hold_runs_out(store: Store) -> None:
    store.enqueue([job("a", owner="web-1", hold=0.2)])
    assert store.claim("w", 30, T) == []
    time.sleep(0.25)
    [claimed] = store.claim("w", 30, T)
    assert claimed.id == "a" and claimed.owner == "w"


def test_release_leaves_jobs_that_are_not_unreleased_alone(store: Store) -> None:
    later = now() + timedelta(seconds=60)
    store.enqueue([job("running", owner="web"), JobRecord(id="scheduled", name="t", run_at=later)])
    store.enqueue([job("retried", owner="web", max_attempts=2)])
    [running] = store.claim_ids("w", 30, ["running"])
    [retried] = store.claim_ids("w", 30, ["retried"])
    assert store.retry(retried, "E: x", "tb", later)
    store.release(["running", "scheduled", "retried", "missing"])
    record = store.get("running")
    assert record is not None and record.status is JobStatus.RUNNING and record.owner == "w"
    for id in ("scheduled", "retried"):  # neither is brought forward
        record = store.get(id)
        assert record is not None and record.run_at is not None
        assert abs((record.run_at - later).total_seconds()) < 0.001
    assert running.id == "running" and store.claim("w2", 30, T) == []


def test_a_job_waits_for_the_one_added_before_it_to_finish(store: Store) -> None:
    store.enqueue([job("first"), job("second", after="first"), job("third", after="second")])
    [first] = store.claim("w", 30, T)
    assert first.id == "first"
    assert store.claim("w", 30, T) == []
    assert store.fail(first, "E: x", None)  # failure also lets the next one go
    [second] = store.claim("w", 30, T)
    assert second.id == "second"
    assert store.complete(second, None)
    assert ids(store.claim("w", 30, T)) == ["third"]


def test_a_job_after_a_cancelled_one_still_runs(store: Store) -> None:
    store.enqueue([job("first", owner="web"), job("second", after="first")])
    assert store.cancel(["first"], "dropped") == ["first"]
    assert ids(store.claim("w", 30, T)) == ["second"]


def test_complete_records_the_result(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 30, T)
    assert store.complete(claimed, {"answer": 42})
    record = store.get("a")
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result == {"answer": 42} and record.finished_at is not None
    assert record.owner is None and record.lease_until is None


def test_retry_requeues_at_the_given_time(store: Store) -> None:
    store.enqueue([job("a", max_attempts=3)])
    [claimed] = store.claim("w", 30, T)
    assert store.retry(claimed, "E: boom", "tb", now() + timedelta(seconds=0.2))
    record = store.get("a")
    assert record is not None and record.status is JobStatus.QUEUED and record.error == "E: boom"
    assert record.owner is None
    assert store.claim("w", 30, T) == []
    time.sleep(0.25)
    [again] = store.claim("w", 30, T)
    assert again.attempts == 2


def test_an_expired_lease_makes_the_job_claimable_as_a_new_attempt(store: Store) -> None:
    store.enqueue([job("a")])
    [lost] = store.claim("dead-worker", 0.1, T)
    time.sleep(0.15)
    [again] = store.claim("w2", 30, T)
    assert again.id == "a" and again.attempts == 2 and again.owner == "w2"
    # The dead worker's late report is refused; the live claim is untouched.
    assert not store.complete(lost, "late")
    assert not store.fail(lost, "late", None)
    assert store.renew([lost], 30) == ["a"]
    assert store.complete(again, "ok")


def test_an_expired_lease_is_noticed_by_a_worker_that_wants_other_names(store: Store) -> None:
    store.enqueue([job("a")])
    store.claim("dead-worker", 0.05, T)
    time.sleep(0.1)
    assert store.claim("other", 30, [(("other",), 5)]) == []
    record = store.get("a")
    assert record is not None and record.status is JobStatus.QUEUED and record.lost == 1


def test_renew_keeps_a_lease_alive(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 0.2, T)
    for _ in range(3):
        time.sleep(0.1)
        assert store.renew([claimed], 0.2) == []
    assert store.claim("other", 30, T) == []
    renewed = store.get("a")
    assert renewed is not None and renewed.owner == "w" and renewed.lease_until is not None


@pytest.mark.parametrize("ending", ["complete", "retry", "fail", "requeue", "lease"])
def test_a_running_job_asked_to_stop_ends_cancelled_however_its_attempt_ends(
    store: Store, ending: str
) -> None:
    store.enqueue([job("a"), job("b", after="a"), job("q")])
    assert store.request_cancel("q")[1] is True  # queued: cancelled at once
    q = store.get("q")
    assert q is not None and q.status is JobStatus.CANCELLED and q.error.startswith("Cancelled")
    [claimed] = store.claim("w", 0.1 if ending == "lease" else 30, T, 1)
    assert store.cancelling(["a", "q", "missing"]) == []
    record, cancelled = store.request_cancel("a")
    assert not cancelled and record is not None and record.status is JobStatus.RUNNING
    assert record.cancel_requested_at is not None
    assert store.cancelling(["a", "q"]) == ["a"]
    later = now() + timedelta(seconds=60)
    if ending == "lease":  # its worker died: the next claim ends it, and takes the next
        time.sleep(0.2)
        assert ids(store.claim("w2", 30, T, 1)) == ["b"]
    else:
        status = {
            "complete": lambda: store.complete(claimed, "result"),
            "retry": lambda: store.retry(claimed, "E: x", "tb", later),
            "fail": lambda: store.fail(claimed, "E: x", "tb"),
            "requeue": lambda: store.requeue(claimed),
        }[ending]()
        assert status is JobStatus.CANCELLED
        assert ids(store.claim("w", 30, T)) == ["b"]  # the next job of its request runs
    done = store.get("a")
    assert done is not None and done.status is JobStatus.CANCELLED and done.result is None
    assert done.error == "Cancelled: errands.cancel() was called while it ran"
    assert done.finished_at is not None and store.cancelling(["a"]) == []
    assert store.request_cancel("missing") == (None, False)


def test_requeue_finished_queues_a_failed_or_cancelled_job_for_another_round(
    store: Store,
) -> None:
    store.enqueue([job("a"), job("ok")])
    [a, ok] = store.claim("w", 30, T, 2)
    assert store.fail(a, "E: bad", "tb") is JobStatus.FAILED
    assert store.complete(ok, 1) is JobStatus.SUCCEEDED
    assert store.unfinished() == 0
    again = store.requeue_finished("a", 2)
    assert again is not None and again.status is JobStatus.QUEUED
    assert (again.attempts, again.max_attempts, again.error) == (1, 2, "E: bad")
    assert again.finished_at is None and store.unfinished() == 1
    [claimed] = store.claim("w", 30, T)
    assert claimed.id == "a" and claimed.attempts == 2
    assert store.complete(claimed, "now") is JobStatus.SUCCEEDED
    succeeded = store.requeue_finished("ok", 2)  # left as it is
    assert succeeded is not None and succeeded.status is JobStatus.SUCCEEDED
    assert store.requeue_finished("missing", 2) is None


def test_requeue_gives_the_job_back_without_spending_an_attempt(store: Store) -> None:
    store.enqueue([job("a")])
    [claimed] = store.claim("w", 30, T)
    assert store.requeue(claimed)
    [again] = store.claim("w", 30, T)
    assert again.attempts == 1


def test_claim_ids_takes_unreleased_and_future_jobs_for_the_eager_path(store: Store) -> None:
    later = JobRecord(id="c", name="t", run_at=now() + timedelta(seconds=60))
    store.enqueue([job("a", owner="web"), job("b", owner="web"), later])
    claimed = store.claim_ids("w", 30, ["b", "c", "missing"])
    assert sorted(ids(claimed)) == ["b", "c"]
    assert all(j.status is JobStatus.RUNNING and j.owner == "w" for j in claimed)
    assert store.claim_ids("w", 30, ["b"]) == []  # claimed once
    store.enqueue([job("d", after="a")])
    assert store.claim_ids("w", 30, ["d"]) == []  # still waits for the one before it


def test_cancel_only_touches_queued_jobs(store: Store) -> None:
    store.enqueue([job("a"), job("b")])
    [running] = store.claim("w", 30, [(("t",), 1)])
    assert store.cancel(["a", "b"], "reason") == ["b"]
    record = store.get("b")
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.error == "reason"
    assert running.id == "a"


def test_listing_is_newest_first_and_filters_by_status(store: Store) -> None:
    store.enqueue([job("a"), job("b"), job("c")])
    [a] = store.claim("w", 30, [(("t",), 1)])
    store.complete(a, None)
    assert ids(store.jobs()) == ["c", "b", "a"]
    assert ids(store.jobs(JobStatus.QUEUED, limit=1)) == ["c"]
    counts = store.counts()
    assert counts[JobStatus.QUEUED] == 2 and counts[JobStatus.SUCCEEDED] == 1
    assert counts[JobStatus.RUNNING] == 0
    assert store.unfinished() == 2
    store.claim("w", 30, [(("t",), 1)])
    store.cancel(["c", "b"], "no")  # one queued, one running: only the queued one goes
    assert store.unfinished() == 1


def test_counts_by_task_leave_out_statuses_with_no_jobs(store: Store) -> None:
    store.enqueue([job("a1", name="a"), job("a2", name="a"), job("b1", name="b")])
    [a1] = store.claim("w", 30, [(("a",), 1)])
    store.complete(a1, None)
    store.claim("w", 30, [(("b",), 1)])
    assert store.counts_by_task() == {
        "a": {JobStatus.SUCCEEDED: 1, JobStatus.QUEUED: 1},
        "b": {JobStatus.RUNNING: 1},
    }


def test_unfinished_follows_every_way_a_job_ends(store: Store) -> None:
    store.enqueue([job(f"j{i}") for i in range(6)] + [job("held", owner="web")])
    assert store.unfinished() == 7
    j0, j1, j2, j3, j4 = store.claim("w", 30, [(("t",), 5)])
    store.complete(j0, None)
    store.fail(j1, "E: x", None)
    store.retry(j2, "E: x", "tb", now())
    store.requeue(j3)
    store.cancel(["j5", "held"], "no")
    assert store.unfinished() == 3  # j2 and j3 queued again, j4 running
    store.renew([j4], 0.01)
    time.sleep(0.03)
    assert len(store.claim("w", 30, T)) == 3  # j4's lease ran out: claimed again
    assert store.unfinished() == 3
    assert store.purge(now() + timedelta(seconds=1)) == 4
    assert store.unfinished() == 3
    assert store.unfinished() == sum(
        n for status, n in store.counts().items() if not status.finished
    )


def test_the_memory_store_keeps_a_bounded_number_of_finished_jobs() -> None:
    store = MemoryStore(keep_finished=3)
    for i in range(10):
        store.enqueue([job(f"j{i}")])
        [claimed] = store.claim("w", 30, T)
        store.complete(claimed, i)
    assert ids(store.jobs()) == ["j9", "j8", "j7"]
    assert store.get("j0") is None
    assert store.unfinished() == 0


def test_the_memory_store_holds_a_job_without_run_at_until_it_is_released() -> None:
    store = MemoryStore()
    store.enqueue([JobRecord(id="a", name="t", run_at=None)])
    assert store.claim("w", 30, T) == []
    store.release(["a"])
    assert ids(store.claim("w", 30, T)) == ["a"]


def test_the_memory_store_drops_the_entries_that_released_jobs_leave_behind() -> None:
    store = MemoryStore()
    # Due before the holds run out: claims look no further than this job.
    store.enqueue([JobRecord(id="later", name="t", run_at=now() + timedelta(seconds=30))])
    for i in range(5000):  # as requests do: enqueue unreleased, release, run
        store.enqueue([job(f"j{i}", owner="web")])
        store.release([f"j{i}"])
        [claimed] = store.claim("w", 30, T)
        store.complete(claimed, None)
    assert len(store._queue) <= 1024


def test_a_lost_attempt_does_not_count_against_retries_but_poison_jobs_fail(store: Store) -> None:
    store.enqueue([job("a", max_attempts=1)])
    for lost in range(1, 6):
        [claimed] = store.claim(f"dies-{lost}", 0.01, T)
        assert claimed.attempts == lost and claimed.lost == lost - 1
        assert claimed.failures == 1  # the running attempt; the dead ones do not count
        time.sleep(0.03)
    assert store.claim("w", 30, T) == []
    record = store.get("a")
    assert record is not None and record.status is JobStatus.FAILED
    assert record.lost == 5 and record.error is not None and "PoisonJob" in record.error
    assert record.finished_at is not None
    assert store.unfinished() == 0


def test_purge_deletes_only_jobs_finished_before_the_cutoff(store: Store) -> None:
    store.enqueue([job("old"), job("new"), job("waiting", owner="web")])
    for claimed in store.claim("w", 30, [(("t",), 2)]):
        store.complete(claimed, None)
    assert store.purge(now() - timedelta(seconds=60)) == 0
    assert store.purge(now() + timedelta(seconds=1)) == 2
    assert store.get("old") is None and store.get("new") is None
    assert store.get("waiting") is not None


# -- processes ------------------------------------------------------------------


def test_beat_records_a_process_and_keeps_when_it_started(store: Store) -> None:
    first = process("w-1", role="worker", tasks=("a",))
    first.seen_at = now() - timedelta(days=1)  # the store keeps its own time
    store.beat(first)
    time.sleep(0.01)
    store.beat(process("web-1"))
    [web, worker] = store.processes()  # latest seen first
    assert (web.id, web.role, web.tasks) == ("web-1", "web", ())
    assert (worker.id, worker.role, worker.host, worker.pid) == ("w-1", "worker", "host", 1234)
    assert worker.tasks == ("a",) and worker.stopped_at is None
    assert worker.seen_at > now() - timedelta(seconds=5)
    again = process("w-1", role="worker", tasks=("a", "b"))
    again.started_at = now() + timedelta(days=1)
    store.beat(again)
    [worker, _] = store.processes()
    assert worker.id == "w-1" and worker.tasks == ("a", "b")
    assert abs((worker.started_at - first.started_at).total_seconds()) < 0.001


def test_a_process_that_stops_releases_its_unreleased_jobs(store: Store) -> None:
    store.beat(process("web-1"))
    store.enqueue([job("a", owner="web-1"), job("b", owner="web-2"), job("c", owner="web-1")])
    store.stopped("web-1")
    assert ids(store.claim("w", 30, T)) == ["a", "c"]
    record = store.get("b")
    assert record is not None and record.owner == "web-2"  # another's jobs stay held
    [web] = store.processes()
    assert web.stopped_at is not None
    store.beat(process("web-1"))  # it came back
    [web] = store.processes()
    assert web.stopped_at is None


def test_processes_not_seen_in_time_are_gone_and_their_jobs_released(store: Store) -> None:
    store.beat(process("web-1"))
    store.beat(process("w-1", role="worker"))
    time.sleep(0.05)
    cutoff = now()
    time.sleep(0.05)  # (PostgreSQL compares on its own clock: the cutoff's age, to a ms)
    store.beat(process("web-2"))
    store.enqueue([job("a", owner="web-1"), job("b", owner="web-2")])
    [running] = store.claim_ids("w-1", 30, ["a"])  # claimed before it was released
    store.enqueue([job("c", owner="web-1")])
    assert sorted(store.release_orphans(cutoff)) == ["w-1", "web-1"]
    assert store.release_orphans(cutoff) == []  # found gone once
    assert ids(store.claim("w-2", 30, T)) == ["c"]
    record = store.get("a")
    assert record is not None and record.owner == "w-1" and running.id == "a"
    stopped = {p.id: p.stopped_at is not None for p in store.processes()}
    assert stopped == {"web-1": True, "w-1": True, "web-2": False}


def test_purge_deletes_processes_stopped_before_the_cutoff(store: Store) -> None:
    store.beat(process("gone"))
    store.beat(process("alive"))
    store.stopped("gone")
    assert store.purge(now() - timedelta(seconds=60)) == 0
    assert [p.id for p in store.processes()] == ["alive", "gone"]
    store.purge(now() + timedelta(seconds=1))
    assert [p.id for p in store.processes()] == ["alive"]


def test_a_claim_takes_no_more_than_its_limit_in_all_of_what_is_due(store: Store) -> None:
    store.enqueue([job(f"a{i}", name="a") for i in range(3)] + [job("b0", name="b")])
    # Each want could take more than the limit together; the claim takes what is due.
    claimed = store.claim("w", 30, [(("none",), 5), (("b",), 5), (("a",), 5)], limit=3)
    assert ids(claimed) == ["b0", "a0", "a1"]
    assert ids(store.claim("w", 30, [(("a",), 5)], limit=5)) == ["a2"]
    assert store.claim("w", 30, [(("a",), 5)], limit=0) == []


def test_a_released_job_is_due_at_its_scheduled_time_however_it_is_released(
    store: Store,
) -> None:
    later = now() + timedelta(seconds=3600)
    store.beat(process("web-1"))
    store.enqueue(
        [
            job("by-request", owner="web-1", scheduled_at=later),
            job("by-stop", owner="web-1", scheduled_at=later),
            job("past", owner="web-1", scheduled_at=now() - timedelta(seconds=5)),
        ]
    )
    store.release(["by-request", "past"])
    store.stopped("web-1")  # the web process went away before releasing the other
    assert ids(store.claim("w", 30, T)) == ["past"]  # a time gone by means at once
    for id in ("by-request", "by-stop"):
        record = store.get(id)
        assert record is not None and record.owner is None
        assert record.run_at == later and record.scheduled_at == later


def test_the_sqlite_store_adds_the_columns_a_file_of_an_earlier_build_lacks(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "old.db")
    store.enqueue([job("a")])
    store.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as db:  # as the first release made it
        db.execute("ALTER TABLE errands_jobs DROP COLUMN scheduled_at")
    store = SQLiteStore(tmp_path / "old.db")
    later = now() + timedelta(seconds=60)
    store.enqueue([job("b", scheduled_at=later)])
    old, new = store.get("a"), store.get("b")
    assert old is not None and old.scheduled_at is None
    assert new is not None and new.scheduled_at == later
    store.close()


def test_purge_tells_its_progress_as_it_goes(store: Store) -> None:
    jobs = [job(f"j{i}") for i in range(2500)]
    store.enqueue(jobs)
    for claimed in iter(lambda: store.claim("w", 30, [(("t",), 500)], 500), []):
        for one in claimed:
            store.complete(one, None)
    told: list[int] = []
    assert store.purge(now() + timedelta(seconds=1), None, told.append) == 2500
    assert told and told[-1] == 2500 and told == sorted(told)
    if isinstance(store, SQLiteStore | PostgresStore):
        assert told == [1000, 2000, 2500]  # a chunk at a time


def test_listings_go_page_by_page_in_the_order_jobs_were_stored(store: Store) -> None:
    """Pages of ``jobs`` (the dashboard's) neither skip nor repeat a job, even when jobs
    were stored in another order than they were made (a slow request's)."""
    made = [job(f"j{i:02}", name="ab"[i % 2]) for i in range(25)]
    store.enqueue(made[10:] + made[:10])  # the first ten stored last
    stored = [r.id for r in made[10:] + made[:10]][::-1]
    pages = [store.jobs(limit=10, offset=o) for o in (0, 10, 20, 30)]
    assert [r.id for page in pages for r in page] == stored
    assert pages[-1] == []
    a = [r.id for r in store.jobs(name="a", limit=100)]
    assert [r.id for r in store.jobs(name="a", limit=5, offset=5)] == a[5:10]
    queued = [r.id for r in store.jobs(JobStatus.QUEUED, limit=100)]
    assert [r.id for r in store.jobs(JobStatus.QUEUED, limit=3, offset=22)] == queued[22:]
