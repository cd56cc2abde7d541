"""``errands jobs|show|stats|cancel|retry|purge``: look at and act on jobs from a shell.

Built with Typer and Rich (the ``cli`` extra). On a terminal, tables and colours; piped,
plain tab-separated lines, nothing cut short (a ``grep`` for a task name or an id finds
it, whatever the width); ``--json`` for scripts. Exit codes: 0 done, 1 the operation
failed or an id was unknown, 2 usage.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    track,
)
from rich.table import Table

from . import __version__
from ._errands import Errands
from ._record import JobRecord, JobStatus, finished_statuses
from ._report import duration as seconds_in
from ._report import first_line, plain, stats_object
from ._stats import Stats
from ._target import TARGET_HELP, err, fail, is_target, open_target, split_target
from .exceptions import ErrandsError, JobNotFound

app = typer.Typer(
    name="errands",
    help="Run workers, and look at and act on the jobs of an Errands instance.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True)

# -- output -----------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    print(json.dumps(plain(value), indent=2, ensure_ascii=False))


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(record: JobRecord) -> str:
    if record.started_at is None or record.finished_at is None:
        return "-"
    return f"{(record.finished_at - record.started_at).total_seconds():.3f}s"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A Rich table on a terminal; piped, a header line and tab-separated lines."""
    rows = [[str(cell) for cell in row] for row in rows]
    if out.is_terminal:
        shown = Table(title=title, title_justify="left")
        for column in columns:
            shown.add_column(column, overflow="fold")
        for row in rows:
            shown.add_row(*row, style=_STYLE.get(row[2] if len(row) > 2 else "", ""))
        out.print(shown)
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row))


_STYLE = {"failed": "red", "cancelled": "dim", "running": "cyan", "succeeded": "green"}


# -- commands ---------------------------------------------------------------------------


def version(value: bool) -> None:
    if value:
        print(f"errands {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Run workers, and look at and act on the jobs of an Errands instance."""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def worker(ctx: typer.Context) -> None:
    """Run the worker of an Errands instance (errands worker --help says more)."""
    from ._worker_cli import worker as run_worker

    run_worker(["worker", *ctx.args])


@app.command()
def jobs(
    target: Annotated[str | None, typer.Argument(help=TARGET_HELP)] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="How many, at most.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of records.")] = False,
) -> None:
    """List the latest jobs, newest first."""
    errands = open_target(target)
    try:
        found = errands.jobs(status=status, limit=limit, task=task)
    except ValueError as exc:
        fail(str(exc), 2)
    if as_json:
        emit_json(found)
        return
    table(
        f"{len(found)} job(s) of {errands.url}",
        ["id", "task", "status", "attempts", "created", "started", "took", "error"],
        (
            [
                r.id,
                r.name,
                r.status.value,
                f"{r.attempts}/{r.max_attempts}",
                when(r.created_at),
                when(r.started_at),
                took(r),
                first_line(r.error),
            ]
            for r in found
        ),
    )


@app.command()
def show(
    args: Annotated[list[str], typer.Argument(metavar="[TARGET] JOB_ID", help=TARGET_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Every field of one job: its arguments, its result and its whole traceback."""
    target, ids = split_target(args)
    if len(ids) != 1:
        fail("show takes one job id (and a target before it, if any)", 2)
    errands = open_target(target)
    record = errands.get(ids[0])
    if record is None:
        fail(f"no job {ids[0]}")
    if as_json:
        emit_json(record)
        return
    for field in dataclasses.fields(record):
        if field.name == "traceback":
            continue  # last, whole
        value = plain(getattr(record, field.name))
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value
        print(f"{field.name:<20} {'-' if shown is None else shown}")
    if record.traceback:
        print("traceback:")
        print(record.traceback.rstrip())


@app.command()
def stats(
    target: Annotated[str | None, typer.Argument(help=TARGET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Counts by status and by task, recent throughput and run times, what waits."""
    errands = open_target(target)
    try:
        found = errands.stats()
    except ErrandsError as exc:
        fail(str(exc))
    if as_json:
        emit_json(stats_object(found))
        return
    show_stats(errands, found)


def show_stats(errands: Errands, found: Stats) -> None:
    summary = stats_object(found)
    table(
        f"jobs of {errands.url}",
        ["status", "jobs"],
        ([status, n] for status, n in summary["counts"].items()),
    )
    table(
        "by task",
        ["task", *(s.value for s in JobStatus)],
        (
            [name, *(counts.get(s.value, 0) for s in JobStatus)]
            for name, counts in summary["tasks"].items()
        ),
    )
    age = summary["oldest_queued_age_s"]
    rates = ", ".join(f"{k}: {v}" for k, v in summary["finished_per_minute"].items())
    print(f"longest wait of a job due to start: {'-' if age is None else f'{age:.1f}s'}")
    print(f"finished per minute (over the last 1, 5, 15 minutes): {rates}")
    table(
        "run time of the jobs that ended in the last hour (their last attempt), by task",
        ["task", "jobs", "p50", "p95"],
        (
            [name, t["jobs"], f"{t['p50']:.3f}s", f"{t['p95']:.3f}s"]
            for name, t in summary["run_times_s"].items()
        ),
    )
    if summary["failed_last_hour"]:
        table(
            "failed in the last hour, by task",
            ["task", "failed"],
            summary["failed_last_hour"].items(),
        )
    if found.unrunnable:
        table(
            "queued jobs no live worker runs",
            ["task", "queued"],
            ([name, n] for name, n in sorted(found.unrunnable.items())),
        )
    table(
        "live workers",
        ["id", "host", "pid", "tasks", "seen"],
        ([w.id, w.host, w.pid or "-", ",".join(w.tasks), when(w.seen_at)] for w in found.workers),
    )


@app.command()
def cancel(
    args: Annotated[list[str], typer.Argument(metavar="[TARGET] JOB_ID...", help=TARGET_HELP)],
) -> None:
    """Cancel jobs: queued ones at once; running ones are asked to stop."""
    target, ids = split_target(args)
    errands = open_target(target)
    failed = False
    for id in ids:
        record = errands.cancel(id)
        if record is None:
            failed = True
            err.print(f"no job {id}", markup=False)
        elif record.status is JobStatus.CANCELLED:
            print(f"{id}\tcancelled")
        elif record.status is JobStatus.RUNNING:
            print(f"{id}\trunning: asked to stop")
        else:
            failed = True
            err.print(f"{id}\t{record.status.value}: finished already, left as it is", markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def retry(
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[TARGET] [JOB_ID...]", help=TARGET_HELP),
    ] = None,
    failed_jobs: Annotated[
        bool, typer.Option("--failed", help="Retry every failed job (of --task).")
    ] = False,
    task: Annotated[str | None, typer.Option(help="With --failed: only this task.")] = None,
) -> None:
    """Run failed or cancelled jobs again, one more round of their task's attempts."""
    target, ids = split_target(args or [])
    if failed_jobs and len(ids) == 1 and is_target(ids[0]):
        target, ids = ids[0], []
    if failed_jobs == bool(ids):
        fail("give job ids, or --failed (with --task to choose one task), not both", 2)
    errands = open_target(target)
    if failed_jobs:
        ids = [r.id for r in errands.jobs(status="failed", limit=10**9, task=task)]
    refused = False
    for id in track(ids, description="retrying", console=err) if err.is_terminal else ids:
        try:
            record = errands.retry(id)
        except JobNotFound:
            refused = True
            err.print(f"no job {id}", markup=False)
            continue
        except ErrandsError as exc:
            refused = True
            err.print(f"{id}\t{exc}", markup=False)
            continue
        print(f"{id}\tqueued (attempts so far {record.attempts}, up to {record.max_attempts})")
    if failed_jobs:
        print(f"{len(ids)} failed job(s) queued again" if ids else "no failed job")
    if refused:
        raise typer.Exit(1)


def duration(value: str) -> float:
    try:
        return seconds_in(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def purge(
    target: Annotated[str | None, typer.Argument(help=TARGET_HELP)] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Only jobs with this status (repeatable); default: all finished."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(help="Finished longer ago than this (30s, 15m, 2h, 7d); default: retention."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete finished jobs (never queued or running ones)."""
    errands = open_target(target)
    seconds = duration(older_than) if older_than is not None else errands._core.options.retention
    try:
        statuses = finished_statuses(status or None)
    except ValueError as exc:
        fail(str(exc), 2)
    which = ", ".join(s.value for s in statuses) if statuses else "finished"
    cutoff = timedelta(seconds=seconds)
    if not yes:
        if not sys.stdin.isatty():
            fail("purge deletes jobs: confirm with --yes (no terminal to ask on)", 2)
        if not typer.confirm(f"delete {which} jobs of {errands.url} finished over {cutoff} ago?"):
            fail("nothing deleted", 1)
    try:
        if err.is_terminal:  # a bar that counts the deleted jobs, chunk by chunk
            with Progress(
                SpinnerColumn(), TextColumn("purging"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=err, transient=True,
            ) as bar:  # fmt: skip
                counting = bar.add_task("purging", total=None)
                deleted = errands._core.purge(
                    seconds, statuses, lambda n: bar.update(counting, completed=n)
                )
        else:
            deleted = errands._core.purge(seconds, statuses)
    except ErrandsError as exc:
        fail(str(exc))
    print(f"{deleted} job(s) deleted")


#: The names a browser on this machine reaches a loopback address by.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def dashboard(
    target: Annotated[str | None, typer.Argument(help=TARGET_HELP)] = None,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port.")] = 8001,
    auth: Annotated[
        str | None,
        typer.Option(
            envvar="ERRANDS_DASHBOARD_AUTH",
            show_envvar=True,
            help="USER:PASSWORD for HTTP Basic (the variable keeps it out of ps); "
            "required on any address but loopback.",
        ),
    ] = None,
    root_path: Annotated[
        str, typer.Option(help="The path prefix a proxy serves the dashboard under.")
    ] = "",
) -> None:
    """Serve the web dashboard of a store's jobs (the dashboard extra)."""
    credentials = None
    if auth:
        user, colon, password = auth.partition(":")
        if not colon or not user or not password:
            fail("--auth takes USER:PASSWORD, neither empty (e.g. --auth admin:s3cret)", 2)
        credentials = (user, password)
    elif not loopback(host):
        fail(
            f"--host {host} can be reached from other machines: give --auth USER:PASSWORD "
            f"(or set $ERRANDS_DASHBOARD_AUTH), or serve on 127.0.0.1 behind a proxy of your own",
            2,
        )
    errands = open_target(target)
    try:
        import uvicorn

        from ._dashboard._guard import only_hosts

        served = errands.dashboard(auth=credentials)
    except ImportError as exc:
        needs = f"the dashboard needs {exc.name}, which is not installed"
        fail(f"{needs}: pip install 'errands[dashboard]'", 2)
    except ErrandsError as exc:
        fail(str(exc), 2)
    host = host.strip("[]")
    # No auth: only this machine's own names (a page of another site that a DNS
    # rebinding points at 127.0.0.1 sends its own name as the Host).
    shown = f"[{host}]" if ":" in host else host
    if credentials is None:
        served = only_hosts(served, [*LOOPBACK_NAMES, shown])
    behind = f"; its proxy serves it under {root_path}/" if root_path else ""
    err.print(
        f"errands dashboard of {errands.url} on http://{shown}:{port}/ "
        f"({'Basic auth' if credentials else 'no auth: this machine only'}{behind}; "
        f"Ctrl+C to stop)",
        markup=False,
    )
    try:
        uvicorn.run(served, host=host, port=port, root_path=root_path, log_level="warning")
    except SystemExit as exc:  # uvicorn exits 3 when it cannot listen
        if exc.code not in (0, None):
            fail(f"could not serve on {shown}:{port} (uvicorn said why, above)")
        raise


def run(argv: Sequence[str] | None = None) -> None:
    app(args=None if argv is None else list(argv), prog_name="errands")
