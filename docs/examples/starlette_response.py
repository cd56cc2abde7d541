"""A single task on a plain Starlette response, as with Starlette's own BackgroundTask."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from errands import BackgroundTask

audit: list[str] = []


def record_visit(path: str) -> None:
    audit.append(path)


async def homepage(request: Request) -> JSONResponse:
    task = BackgroundTask(record_visit, request.url.path)
    return JSONResponse({"job": task.job.id}, background=task)


app = Starlette(routes=[Route("/", homepage)])
