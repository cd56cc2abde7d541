"""``errands jobs|show|stats|cancel|retry|purge``, run as a user runs them: in a process
of their own, in a project with a SQLite store holding jobs in every status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from errands import Errands, JobRecord, JobStatus
from tests.conftest import errands_command

ENV = {name: value for name, value in os.environ.items() if name != "ERRANDS_URL"}

APP = """
    from errands import Errands

    errands = Errands("sqlite:///errands.db")


    @errands.task(name="ok")
    def ok(x: int) -> int:
        return x


    @errands.task(name="bad", retries=1, backoff=0)
    def bad(x: int) -> None:
        raise ValueError(f"boom {x} <script>")
"""


run = errands_command


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A project whose store holds a succeeded, a failed, a queued (delayed) and a
    cancelled job; their ids by status."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    sys.path.insert(0, str(tmp_path))
    try:
        monkeypatch.chdir(tmp_path)
        import importlib

        import app  # type: ignore[import-not-found]

        app = importlib.reload(app)
        errands: Errands = app.errands
        succeeded = errands.add_task(app.ok, 1)
        failed = errands.add_task(app.bad, 2)
        asyncio.run(errands.join(timeout=30))
        queued = errands.add_task(app.ok.options(delay=3600), 3)
        cancelled = errands.add_task(app.ok.options(delay=3600), 4)
        errands.cancel(cancelled.id)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("app", None)
    return {
        "root": str(tmp_path),
        "succeeded": succeeded.id,
        "failed": failed.id,
        "queued": queued.id,
        "cancelled": cancelled.id,
    }


def test_jobs_lists_every_job_piped_and_as_json(project: dict[str, str]) -> None:
    root = Path(project["root"])
    listed = run(root, "jobs")  # no target: ./errands.db
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t") == [
        "id", "task", "status", "attempts", "created", "started", "took", "error",
    ]  # fmt: skip
    by_id = {row.split("\t")[0]: row.split("\t") for row in rows}
    assert by_id[project["failed"]][1:4] == ["bad", "failed", "2/2"]
    assert by_id[project["failed"]][7] == "ValueError: boom 2 <script>"  # whole, not cut
    assert by_id[project["queued"]][2] == "queued" and "\x1b" not in listed.stdout
    as_json = json.loads(run(root, "jobs", "app:errands", "--json").stdout)
    kinds = ("succeeded", "failed", "queued", "cancelled")
    assert {r["id"] for r in as_json} == {project[kind] for kind in kinds}
    assert set(as_json[0]) == {f.name for f in fields(JobRecord)}
    failed = next(r for r in as_json if r["id"] == project["failed"])
    assert failed["created_at"].endswith("Z") and failed["status"] == "failed"
    only = json.loads(run(root, "jobs", "--status", "failed", "--json").stdout)
    assert [r["id"] for r in only] == [project["failed"]]
    ok = json.loads(run(root, "jobs", "--task", "ok", "--json").stdout)
    assert {r["name"] for r in ok} == {"ok"} and len(ok) == 3
    bad = run(root, "jobs", "--status", "nonsense")
    assert bad.returncode == 2 and "'nonsense' is not a job status" in bad.stderr


def test_show_prints_every_field_and_the_whole_traceback(project: dict[str, str]) -> None:
    root = Path(project["root"])
    shown = run(root, "show", project["failed"])
    assert shown.returncode == 0, shown.stderr
    assert "error                ValueError: boom 2 <script>" in shown.stdout
    assert "traceback:" in shown.stdout and 'raise ValueError(f"boom {x} <script>")' in shown.stdout
    one = json.loads(run(root, "show", "app:errands", project["succeeded"], "--json").stdout)
    assert one["result"] == 1 and one["status"] == "succeeded" and one["args"] == [1]
    missing = run(root, "show", "no-such-job")
    assert missing.returncode == 1 and "no job no-such-job" in missing.stderr


def test_stats_counts_every_status_and_says_what_ran_lately(project: dict[str, str]) -> None:
    root = Path(project["root"])
    found = json.loads(run(root, "stats", "sqlite:///errands.db", "--json").stdout)
    assert found["counts"] == {
        "queued": 1, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 1,
    }  # fmt: skip
    assert found["tasks"]["ok"] == {"succeeded": 1, "queued": 1, "cancelled": 1}
    assert found["finished_per_minute"]["1m"] >= 2
    assert found["oldest_queued_age_s"] is None  # its one queued job is delayed: not due
    assert set(found["run_times_s"]) == {"ok", "bad"}
    assert found["unrunnable"] == {"ok": 1}  # no live worker
    assert found["failed_last_hour"] == {"bad": 1}
    assert len(found["timeline"]) == 60
    last = found["timeline"][-2:]
    assert sum(m["succeeded"] for m in last) == 1 and sum(m["failed"] for m in last) == 1
    assert last[-1]["queued"] == 1 and last[-1]["start"].endswith(":00Z")
    table = run(root, "stats")
    assert table.returncode == 0 and "failed\t1" in table.stdout
    assert "finished per minute" in table.stdout
    assert "\ntask\tfailed\nbad\t1\n" in table.stdout  # piped: the header, no title


def test_cancel_and_retry_act_and_exit_1_on_what_they_cannot(project: dict[str, str]) -> None:
    root = Path(project["root"])
    done = run(root, "cancel", project["queued"], "no-such-job")
    assert done.returncode == 1
    assert f"{project['queued']}\tcancelled" in done.stdout and "no job no-such-job" in done.stderr
    again = run(root, "retry", "app:errands", project["failed"], project["cancelled"])
    assert again.returncode == 0, again.stderr
    assert f"{project['failed']}\tqueued (attempts so far 2, up to 4)" in again.stdout
    refused = run(root, "retry", project["succeeded"])
    assert refused.returncode == 1 and "only a failed or cancelled job" in refused.stderr
    errands = Errands(f"sqlite:///{root}/errands.db")
    assert errands.get(project["failed"]).status is JobStatus.QUEUED  # type: ignore[union-attr]
    none = run(root, "retry", "--failed")
    assert none.returncode == 0 and "no failed job" in none.stdout
    usage = run(root, "retry")
    assert usage.returncode == 2 and "give job ids, or --failed" in usage.stderr
    alone = run(root, "show", "sqlite:///errands.db")  # the id forgotten
    assert alone.returncode == 2 and "give the job id(s) after it" in alone.stderr


def test_purge_deletes_finished_jobs_only_and_asks_first(project: dict[str, str]) -> None:
    root = Path(project["root"])
    queued = run(root, "purge", "--status", "queued", "--yes")
    assert queued.returncode == 2 and "finished jobs only, not queued ones" in queued.stderr
    unasked = run(root, "purge", "--older-than", "0s")
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    bad = run(root, "purge", "--older-than", "soon", "--yes")
    assert bad.returncode == 2 and "30s, 15m, 2h, 7d" in bad.stderr
    kept = run(root, "purge", "--yes")  # default: older than the retention (7 days)
    assert kept.returncode == 0 and "0 job(s) deleted" in kept.stdout
    gone = run(root, "purge", "--status", "failed", "--older-than", "0s", "--yes")
    assert "1 job(s) deleted" in gone.stdout
    rest = run(root, "purge", "--older-than", "0s", "--yes")
    assert "2 job(s) deleted" in rest.stdout  # succeeded and cancelled; never the queued
    left = json.loads(run(root, "jobs", "--json").stdout)
    assert [r["id"] for r in left] == [project["queued"]]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("jobs", "memory://"), "keeps its jobs in the memory of the process"),
        (("jobs", "sqlite:///nowhere/x.db"), "no store at"),
        (("jobs", "nosuchmodule:errands"), "could not import"),
        (("jobs",), "no target, no $ERRANDS_URL, and no errands.db"),
        (("jobs", "what"), "is neither module:attribute nor a store URL"),
    ],
)
def test_bad_targets_exit_2_saying_what_to_pass(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    answer = run(tmp_path, *args)
    assert answer.returncode == 2 and says in answer.stderr, answer.stderr


def test_a_module_whose_instance_keeps_jobs_in_memory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(
        'from errands import Errands\n\nerrands = Errands("memory://")\n'
    )
    answer = run(tmp_path, "jobs", "memapp:errands")
    assert answer.returncode == 2 and "keeps its jobs in memory" in answer.stderr


def test_version_and_help_name_every_command(tmp_path: Path) -> None:
    import errands

    assert run(tmp_path, "--version").stdout.strip() == f"errands {errands.__version__}"
    helped = run(tmp_path, "--help").stdout
    for command in ("worker", "jobs", "show", "stats", "cancel", "retry", "purge"):
        assert command in helped
    assert "--concurrency" in run(tmp_path, "worker", "--help").stdout


def test_purge_on_a_terminal_shows_a_bar_and_still_says_how_many(
    project: dict[str, str],
) -> None:
    import pty
    import select

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "errands", "purge", "--older-than", "0s", "--yes"],
        cwd=project["root"],
        env={**ENV, "COLUMNS": "100", "TERM": "xterm"},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=30) == 0
    os.close(main)
    assert b"3 job(s) deleted" in seen  # succeeded, failed and cancelled; not the queued
