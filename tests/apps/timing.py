"""An app for timing tests against a real uvicorn server.

``TIMING_WORKER=1`` runs errands' worker in the lifespan; otherwise tasks run in
the request after the response, as FastAPI's do. A BaseHTTPMiddleware is in the stack.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import StreamingResponse

from errands import BackgroundTasks, Errands

errands = Errands("memory://")
with_worker = os.environ.get("TIMING_WORKER") == "1"
app = FastAPI(lifespan=errands.lifespan if with_worker else None)
marks: dict[str, dict[str, float]] = {}


def mark(token: str, what: str) -> None:
    marks.setdefault(token, {})[what] = time.time()


@app.middleware("http")
async def passthrough(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    return await call_next(request)


@app.get("/health")
async def health() -> str:
    return "ok"


async def sleep_async(token: str, seconds: float) -> None:
    mark(token, "task_started")
    await asyncio.sleep(seconds)
    mark(token, "task_finished")


def sleep_sync(token: str, seconds: float) -> None:
    mark(token, "task_started")
    time.sleep(seconds)
    mark(token, "task_finished")


@errands.task
async def sleep_registered(token: str, seconds: float) -> None:
    await sleep_async(token, seconds)


KINDS = {"async": sleep_async, "sync": sleep_sync, "registered": sleep_registered}


@app.get("/task/{kind}/{token}")
async def add(kind: str, token: str, seconds: float, tasks: BackgroundTasks) -> dict[str, str]:
    mark(token, "endpoint")
    tasks.add_task(KINDS[kind], token, seconds)
    return {"token": token}


@app.get("/stream/{token}")
async def stream(token: str, tasks: BackgroundTasks) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for i in range(3):
            await asyncio.sleep(0.1)
            mark(token, f"chunk{i}")
            yield f"{i}\n"

    tasks.add_task(sleep_async, token, 0)
    return StreamingResponse(body())


@app.get("/marks/{token}")
async def get_marks(token: str) -> dict[str, float]:
    return marks.get(token, {})


@app.websocket("/ws/{token}")
async def ws(websocket: WebSocket, token: str, tasks: BackgroundTasks) -> None:
    await websocket.accept()
    tasks.add_task(sleep_async, token, 0)
    await websocket.receive_text()
    mark(token, "endpoint_returned")
    await websocket.close()
