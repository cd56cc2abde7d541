"""Smoke test of ``pip install 'errands[dashboard]'`` alone, run by ``scripts/smoke`` in
a fresh venv: the installed wheel carries the dashboard's templates and assets, and the
dashboard, mounted in a FastAPI app served by uvicorn (which the extra brings), answers
behind its Basic auth. Not collected by pytest."""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import uvicorn
from fastapi import FastAPI

import errands as errands_package
from errands import Errands

EXTRA = "errands[dashboard]"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def get(url: str, auth: bool = True) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(b"admin:pw").decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main() -> None:
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        errands = Errands(f"sqlite:///{tmp}/errands.db")

        @errands.task(name="smoke.add")
        def add(a: int, b: int) -> int:
            return a + b

        job = errands.add_task(add, 2, 3)
        asyncio.run(errands.join(timeout=30))
        app = FastAPI()
        app.mount("/errands", errands.dashboard(auth=("admin", "pw")))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            check(time.monotonic() < deadline, "uvicorn did not start in 20 s")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}/errands"
        try:
            status, _ = get(base + "/", auth=False)
            check(status == 401, f"without credentials the overview answered {status}, not 401")
            status, page = get(base + "/")
            check(status == 200 and "smoke.add" in page, f"the overview answered {status}")
            status, page = get(f"{base}/jobs/{job.id}")
            check(status == 200 and "smoke.add" in page, f"the job's page answered {status}")
            for asset in ("errands.css", "errands.js", "favicon.svg"):
                status, body = get(f"{base}/static/{asset}")
                check(status == 200 and bool(body), f"the wheel lacks static/{asset} ({status})")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    print(f"{EXTRA}: the dashboard serves its pages and assets from the installed wheel")


if __name__ == "__main__":
    main()
