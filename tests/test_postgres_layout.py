"""The PostgreSQL store's layout across errands versions: a schema made by an earlier
errands is upgraded in place, once, with its jobs; the result is the layout a new
schema gets; a role that may not alter it is told what to do; a newer layout is used
or refused as it says."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from errands import ConfigurationError, Errands, JobStatus
from errands.postgres._schema import READERS_FROM, VERSION
from tests.conftest import postgres_url
from tests.test_postgres_store import T, open_store, query, schema_of
from tests.test_postgres_store import opened as opened  # a fixture

pytestmark = pytest.mark.postgres

V1 = (Path(__file__).parent / "layouts" / "postgres_v1.sql").read_text()


@pytest.fixture
def url(postgres_database: str) -> str:
    return postgres_url(postgres_database)


def make_v1(url: str) -> None:
    """The schema as errands of layout version 1 made it, holding a queued job and a
    finished one."""
    schema = schema_of(url)
    query(url, f"CREATE SCHEMA {schema}")
    query(url, f"SET search_path = {schema}; {V1}")
    for id, status, finished in (("waiting", "queued", "NULL"), ("done", "succeeded", "now()")):
        query(
            url,
            f"INSERT INTO {schema}.jobs (id, name, status, args, kwargs, attempts, "
            "max_attempts, result, created_at, run_at, finished_at) VALUES "
            f"(%s, 't', %s, '[21]', '{{}}', 0, 1, '42', now(), now(), {finished})",
            id,
            status,
        )


def catalog(url: str, schema: str) -> dict[str, list[tuple[object, ...]]]:
    """What the layout is, as the server describes it, names of the schema left out."""
    columns = query(
        url,
        "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
        "column_default, is_identity FROM information_schema.columns "
        "WHERE table_schema = %s ORDER BY 1, 3",
        schema,
    )
    constraints = query(
        url,
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = %s ORDER BY 2",
        schema,
    )
    indexes = query(
        url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
        schema,
    )

    def bare(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        return [tuple(str(v).replace(f"{schema}.", "") for v in row) for row in rows]

    return {"columns": bare(columns), "constraints": bare(constraints), "indexes": bare(indexes)}


def test_a_schema_of_layout_1_is_upgraded_in_place_keeping_its_jobs(
    opened: Callable[[str], Errands], url: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_v1(url)
    errands = opened(url)
    schema = schema_of(url)
    assert query(url, f"SELECT version, readers_from FROM {schema}.version") == [
        (VERSION, READERS_FROM)
    ]
    assert "upgraded the PostgreSQL store" in caplog.text and "from layout version 1" in caplog.text
    done = errands.get("done")
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 42
    store = open_store(url)
    try:
        [claimed] = store.claim("w", 30, T)
        assert claimed.id == "waiting" and claimed.args == [21]
        assert store.complete(claimed, 42) is JobStatus.SUCCEEDED
    finally:
        store.close()
    # What layout 2 adds: a status no errands knows is refused by the database.
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_status"):
        query(url, f"UPDATE {schema}.jobs SET status = 'done' WHERE id = 'done'")


def test_an_upgraded_schema_is_the_layout_a_new_schema_gets(
    opened: Callable[[str], Errands], postgres_database: str
) -> None:
    upgraded, fresh = postgres_url(postgres_database), postgres_url(postgres_database)
    make_v1(upgraded)
    opened(upgraded)
    opened(fresh)
    assert catalog(upgraded, schema_of(upgraded)) == catalog(fresh, schema_of(fresh))


@pytest.mark.parametrize("start", ["new", "layout 1"])
def test_processes_starting_together_make_or_upgrade_it_once(start: str, url: str) -> None:
    if start == "layout 1":
        make_v1(url)
    made: list[Errands] = []
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def start_one() -> None:
        start.wait()
        try:
            made.append(Errands(url))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=start_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert failures == [] and len(made) == 4
        assert query(url, f"SELECT version FROM {schema_of(url)}.version") == [(VERSION,)]
    finally:
        for errands in made:
            errands._core.backend.store.close()  # type: ignore[attr-defined]


@pytest.fixture
def reader_writer(url: str) -> Iterator[str]:
    """A role that may read and write the store's tables but not alter them, as an
    application's role often is: the URL of it."""
    role = f"errands_test_rw_{uuid.uuid4().hex[:8]}"
    schema = schema_of(url)
    make_v1(url)
    query(url, f"CREATE ROLE {role} LOGIN")
    query(url, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    query(url, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
    try:
        yield url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    finally:
        query(url, f"DROP OWNED BY {role}")
        query(url, f"DROP ROLE {role}")


def test_a_role_that_may_not_alter_the_schema_is_told_to_upgrade_it_as_its_owner(
    opened: Callable[[str], Errands], url: str, reader_writer: str
) -> None:
    with pytest.raises(ConfigurationError, match="start errands once as the schema's owner"):
        opened(reader_writer)
    assert query(url, f"SELECT version FROM {schema_of(url)}.version") == [(1,)]  # untouched
    opened(url)  # its owner upgrades it
    assert opened(reader_writer).get("waiting") is not None  # and the role opens it


def test_a_newer_layout_is_used_if_it_says_so_and_refused_if_not(
    opened: Callable[[str], Errands], url: str
) -> None:
    opened(url)
    version = f"{schema_of(url)}.version"
    query(url, f"UPDATE {version} SET version = %s, readers_from = %s", VERSION + 1, VERSION)
    opened(url)  # it only added: this errands may go on using it (a rolling deploy)
    assert query(url, f"SELECT version FROM {version}") == [(VERSION + 1,)]  # not downgraded
    query(url, f"UPDATE {version} SET readers_from = %s", VERSION + 1)
    with pytest.raises(ConfigurationError, match=r"cannot use; this one knows .*: upgrade errands"):
        opened(url)


def test_public_and_a_schema_holding_tables_errands_did_not_make_are_refused(
    opened: Callable[[str], Errands], postgres_database: str
) -> None:
    """Refused before anything is made: errands' table names (jobs, ...) could be the
    application's own. ``public`` is, even while empty."""
    with pytest.raises(ConfigurationError, match="the schema 'public' is your application's"):
        opened(f"{postgres_database}?schema=public")
    assert query(postgres_database, "SELECT to_regclass('public.version')") == [(None,)]
    query(postgres_database, "CREATE SCHEMA app")
    query(postgres_database, "CREATE TABLE app.jobs (id text)")
    query(postgres_database, "INSERT INTO app.jobs VALUES ('theirs')")
    try:
        with pytest.raises(
            ConfigurationError,
            match=r"schema 'app', which holds tables errands did not make \(jobs\)",
        ):
            opened(f"{postgres_database}?schema=app")
        assert query(postgres_database, "SELECT * FROM app.jobs") == [("theirs",)]
        assert query(postgres_database, "SELECT to_regclass('app.version')") == [(None,)]
    finally:
        query(postgres_database, "DROP SCHEMA app CASCADE")
    # An empty schema someone made for errands is fine.
    query(postgres_database, "CREATE SCHEMA made_for_errands")
    try:
        opened(f"{postgres_database}?schema=made_for_errands")
    finally:
        query(postgres_database, "DROP SCHEMA made_for_errands CASCADE")


def test_a_row_errands_did_not_write_does_not_stop_the_upgrade(
    opened: Callable[[str], Errands], url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-made status fails the new check on the rows there: the upgrade goes on,
    the check holds for new writes, and the log says what to do."""
    make_v1(url)
    schema = schema_of(url)
    query(url, f"UPDATE {schema}.jobs SET status = 'done' WHERE id = 'done'")
    errands = opened(url)
    assert query(url, f"SELECT version FROM {schema}.version") == [(VERSION,)]
    assert "holds rows errands did not write" in caplog.text
    assert "VALIDATE CONSTRAINT jobs_status" in caplog.text
    odd = errands.get("done")
    assert odd is not None and odd.status is JobStatus.FAILED  # shown, with the reason
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_status"):
        query(url, f"UPDATE {schema}.jobs SET status = 'gone' WHERE id = 'waiting'")
    waiting = errands.get("waiting")
    assert waiting is not None and waiting.status is JobStatus.QUEUED


def test_an_upgrade_that_waits_too_long_for_a_table_changes_nothing_and_says_so(
    opened: Callable[[str], Errands], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from errands import StoreError
    from errands.postgres import _layout, parse_url

    monkeypatch.setattr(_layout, "UPGRADE_LOCK_TIMEOUT", "200ms")
    make_v1(url)
    schema = schema_of(url)
    with psycopg.connect(parse_url(url)[0]) as old_worker:  # a transaction left open
        old_worker.execute(f"SELECT count(*) FROM {schema}.jobs")
        with pytest.raises(StoreError, match="held its tables for longer than 200ms"):
            opened(url)
        old_worker.rollback()
    assert query(url, f"SELECT version FROM {schema}.version") == [(1,)]
    opened(url)  # the next start
    assert query(url, f"SELECT version FROM {schema}.version") == [(VERSION,)]
