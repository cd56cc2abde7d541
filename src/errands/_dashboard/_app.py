"""The dashboard's routes: the pages (overview, jobs, one job), the buttons (POST
actions, answered by a redirect to a page that says what was done) and the JSON API
the same data comes from. Every store read runs in a worker thread: a SQLite or Redis
read must not hold up the event loop of the app the dashboard is mounted in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._record import JobRecord, JobStatus, utcnow
from .._report import duration, first_line, plain, stats_object
from .._task import Task
from .._tuning import MAX_SECONDS
from ..exceptions import ConfigurationError, ErrandsError, JobNotFound, StoreError
from . import _views as views
from ._guard import Auth, Guard

HERE = Path(__file__).parent
#: The most an action's form or JSON body may hold.
MAX_BODY = 64 * 1024
#: What a redirect after an action may say (by key, so that a link cannot make the
#: page say anything else).
DONE = {
    "cancelled": "Cancelled: the job will not run.",
    "stopping": "Asked to stop: the job ends cancelled when its attempt does.",
    "retried": "Queued again: the job runs one more round of its task's attempts.",
    "purged": "Purged {n} finished job(s).",
}
#: The fields each action takes (anything else is refused: a typo must not widen a purge).
FIELDS = {"cancel": {"id"}, "retry": {"id"}, "purge": {"older_than", "status"}}
#: How often the pages refresh themselves (seconds).
REFRESH = {"overview": 5, "jobs": 3, "job": 2}


class Problem(Exception):
    """What to answer instead: a status and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def build(errands: views.Jobs, tasks: Mapping[str, Task[Any, Any]], auth: Auth) -> Starlette:
    """The dashboard of ``errands`` (an ``Errands``) whose registered ``tasks`` it
    knows by name (their timeouts, for the stuck signals)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        stamp=views.stamp,
        first_line=first_line,
        pretty=views.pretty,
        took=views.took,
        path=lambda id: quote(id, safe=""),  # an id in a path: its slashes too
    )
    dashboard = Dashboard(errands, tasks, Jinja2Templates(env=env))
    routes = [
        Route("/", dashboard.overview, name="overview"),
        Route("/jobs", dashboard.jobs, name="jobs"),
        Route("/jobs/{id:path}", dashboard.job, name="job"),
        Route("/actions/{action}", dashboard.act, methods=["POST"]),
        Route("/api/stats", dashboard.api_stats),
        Route("/api/jobs", dashboard.api_jobs),
        Route("/api/jobs/{id:path}", dashboard.api_job),
        Route("/api/{action}", dashboard.api_act, methods=["POST"]),
        Mount("/metrics", metrics_app(errands)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, auth=auth)])


def metrics_app(errands: views.Jobs) -> Any:
    """The instance's Prometheus metrics (counting from now), or an answer that says
    what to install."""
    try:
        return errands.metrics()
    except ConfigurationError as exc:
        return PlainTextResponse(str(exc), 501)


def root(request: Request) -> str:
    """Where the dashboard is mounted (``""`` when served alone at ``/``)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


class Dashboard:
    def __init__(
        self, errands: views.Jobs, tasks: Mapping[str, Task[Any, Any]], templates: Jinja2Templates
    ) -> None:
        self.errands = errands
        self.tasks = tasks
        self.templates = templates

    # -- pages --------------------------------------------------------------------------

    def render(self, request: Request, page: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("refresh", REFRESH.get(page, 0))
        done = DONE.get(request.query_params.get("done") or "")
        if done is not None:
            count = request.query_params.get("n", "")
            done = done.format(n=int(count) if count.isascii() and count.isdigit() else "the")
        return self.templates.TemplateResponse(
            request,
            f"{page}.html",
            {
                "root": root(request),
                "page": page,
                "store": self.errands.url,
                "done": done,
                "statuses": [s.value for s in JobStatus],
                "now": utcnow(),
                "ago": views.ago,
                "span": views.span,
                **context,
            },
            status_code=status,
        )

    def problem(self, request: Request, problem: Problem) -> Response:
        return self.render(request, "problem", problem.status, message=problem.message, refresh=0)

    async def overview(self, request: Request) -> Response:
        try:
            found = await run_in_threadpool(views.overview, self.errands, self.tasks)
        except ErrandsError as exc:
            return self.problem(request, Problem(503, str(exc)))
        return self.render(request, "overview", data=found)

    async def jobs(self, request: Request) -> Response:
        wanted = request.query_params.get("id", "").strip()
        if wanted:
            record = await run_in_threadpool(views.find, self.errands, wanted)
            if record is not None:
                return RedirectResponse(job_url(request, record.id), 303)
        try:
            found = await self.listing(request)
        except Problem as problem:
            return self.problem(request, problem)
        filters = {"status": found.status.value if found.status else "", "task": found.task or ""}
        return self.render(
            request,
            "jobs",
            listing=found,
            filters=filters,
            missing=wanted[: views.MAX_ID] if wanted else None,
            tasks=sorted({*self.tasks, *(r.name for r in found.jobs)}),
            newer=page_link(request, filters, found.page - 1) if found.page > 1 else None,
            older=page_link(request, filters, found.page + 1) if found.more else None,
        )

    async def job(self, request: Request) -> Response:
        id = request.path_params["id"]
        record = await run_in_threadpool(views.find, self.errands, id)
        if record is None:
            shown = id if len(id) <= 80 else f"{id[:80]}… ({len(id):,} characters)"
            return self.problem(request, Problem(404, f"no job {shown}"))
        chain = await run_in_threadpool(views.sequence, self.errands, record)
        return self.render(
            request,
            "job",
            record=record,
            fields=fields_of(record),
            events=views.events(record),
            sequence=chain,
            actions=views.actions(record),
            refresh=0 if record.finished else REFRESH["job"],
        )

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        try:
            form = await read_form(request, action)
            if action == "purge":
                if not form.get("status"):  # a form sends no field for no box ticked
                    raise Problem(400, "tick at least one status to purge")
                deleted = await run_in_threadpool(self.purge, form)
                return RedirectResponse(f"{root(request)}/?done=purged&n={deleted}", 303)
            done, record = await run_in_threadpool(self.do, action, form)
        except Problem as problem:
            return self.problem(request, problem)
        return RedirectResponse(f"{job_url(request, record.id)}?done={done}", 303)

    async def listing(self, request: Request) -> views.Listing:
        """The page of jobs the query asks for; Problem for a query that cannot be."""
        query = request.query_params
        try:
            return await run_in_threadpool(
                views.listing,
                self.errands,
                query.get("status"),
                query.get("task"),
                query.get("page"),
            )
        except views.BadInput as exc:
            raise Problem(400, str(exc)) from None
        except ErrandsError as exc:
            raise Problem(503, str(exc)) from None

    def do(self, action: str, form: dict[str, list[str]]) -> tuple[str, JobRecord]:
        """Cancel or retry the job ``id=``: what was done (a key of ``DONE``) and the
        job's record after; Problem for what could not be (503 where the store or the
        broker failed: that may pass, unlike a job's state)."""
        try:
            return self._do(action, one(form, "id"))
        except StoreError as exc:
            raise Problem(503, str(exc)) from None

    def _do(self, action: str, id: str) -> tuple[str, JobRecord]:
        if action == "cancel":
            before = views.find(self.errands, id)
            if before is None:
                raise Problem(404, f"no job {id[:80]}")
            if before.finished:
                raise Problem(409, f"job {id} {before.status.value} already: left as it is")
            record = self.errands.cancel(id)
            if record is None:
                raise Problem(404, f"no job {id[:80]}")  # purged meanwhile
            if record.status is JobStatus.RUNNING:
                return "stopping", record
            if record.status is JobStatus.CANCELLED:
                return "cancelled", record
            raise Problem(409, f"job {id} {record.status.value} before it could be cancelled")
        if action == "retry":
            if len(id) > views.MAX_ID:
                raise Problem(404, f"no job {id[:80]}")
            try:
                return "retried", self.errands.retry(id)
            except JobNotFound:
                raise Problem(404, f"no job {id[:80]}") from None
            except StoreError:
                raise
            except ErrandsError as exc:
                raise Problem(409, str(exc)) from None
        raise Problem(404, f"no action {action[:40]!r}")

    def purge(self, form: dict[str, list[str]]) -> int:
        try:
            seconds = duration(one(form, "older_than"))
            if seconds > MAX_SECONDS:
                raise ValueError(f"older_than is at most ten years, got {one(form, 'older_than')}")
            statuses = form.get("status")  # absent: all finished ones
            if statuses == []:
                raise Problem(
                    400, "status is an empty list: name one status or more, or leave it out for all"
                )
            return self.errands.purge(seconds, statuses)
        except ValueError as exc:
            raise Problem(400, str(exc)) from None
        except StoreError as exc:
            raise Problem(503, str(exc)) from None
        except ErrandsError as exc:
            raise Problem(409, str(exc)) from None

    # -- the JSON API -------------------------------------------------------------------

    async def api_stats(self, request: Request) -> Response:
        try:
            found = await run_in_threadpool(self.errands.stats)
        except ErrandsError as exc:
            return api_problem(Problem(503, str(exc)))
        return JSONResponse(plain(stats_object(found)))

    async def api_jobs(self, request: Request) -> Response:
        try:
            found = await self.listing(request)
        except Problem as problem:
            return api_problem(problem)
        return JSONResponse({"jobs": plain(found.jobs), "page": found.page, "more": found.more})

    async def api_job(self, request: Request) -> Response:
        id = request.path_params["id"]
        record = await run_in_threadpool(views.find, self.errands, id)
        if record is None:
            return api_problem(Problem(404, f"no job {id[:80]}"))
        return JSONResponse(plain(record))

    async def api_act(self, request: Request) -> Response:
        action = request.path_params["action"]
        try:
            form = await read_form(request, action)
            if action == "purge":
                deleted = await run_in_threadpool(self.purge, form)
                return JSONResponse({"deleted": deleted})
            done, record = await run_in_threadpool(self.do, action, form)
        except Problem as problem:
            return api_problem(problem)
        return JSONResponse({"done": done, "job": plain(record)})


def api_problem(problem: Problem) -> Response:
    return JSONResponse({"detail": problem.message}, problem.status)


def job_url(request: Request, id: str) -> str:
    return f"{root(request)}/jobs/{quote(id, safe='')}"


def page_link(request: Request, filters: dict[str, str], page: int) -> str:
    query = {k: v for k, v in filters.items() if v}
    if page > 1:
        query["page"] = str(page)
    return f"{root(request)}/jobs" + (f"?{urlencode(query)}" if query else "")


def one(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    if not values:
        raise Problem(400, f"the action needs {name}= (a form field or a JSON key)")
    return values[0]


async def read_form(request: Request, action: str) -> dict[str, list[str]]:
    """An action's fields, from a form (urlencoded) or a JSON object of strings (or
    lists of them); at most ``MAX_BODY`` bytes; Problem for anything else, a field the
    action does not take included."""
    if action not in FIELDS:
        raise Problem(404, f"no action {action[:40]!r}: the dashboard does cancel, retry, purge")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, f"an action's body is at most {MAX_BODY:,} bytes")
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    try:
        if kind == "application/json":
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("not an object")
            form = {
                key: value if isinstance(value, list) else [value] for key, value in data.items()
            }
            if not all(isinstance(v, str) for values in form.values() for v in values):
                raise ValueError("its values are strings, or lists of strings")
        else:
            form = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=100)
        unknown = sorted(set(form) - FIELDS[action])
        if unknown:
            known = " and ".join(sorted(FIELDS[action]))
            raise Problem(400, f"{action} takes {known}, not {', '.join(unknown)[:200]}")
        for values in form.values():
            for value in values:
                value.encode()  # a lone surrogate (JSON's "\ud800") is no id or name
    except (ValueError, UnicodeError, RecursionError) as exc:
        reason = type(exc).__name__ if isinstance(exc, RecursionError) else str(exc)[:200]
        raise Problem(
            400, f"an action's body is a form or a JSON object of text ({reason})"
        ) from None
    return form


def fields_of(record: JobRecord) -> list[tuple[str, Any]]:
    """The record's fields for the page's table (arguments, result, error and
    traceback are shown on their own)."""
    shown = plain(record)
    for name in ("args", "kwargs", "result", "error", "traceback"):
        shown.pop(name, None)
    return [(k, json.dumps(v) if isinstance(v, bool) else v) for k, v in shown.items()]
