"""The demo: a small signup service whose background work you can watch.

Run it with ``scripts/demo`` and open http://127.0.0.1:8000/ in a browser: a signup
form above errands' dashboard (mounted at /errands), where each signup's job shows up,
retries and finishes. Or from a shell:

    curl -X POST http://127.0.0.1:8000/signup/ada@example.com
    curl http://127.0.0.1:8000/jobs/<id>

Jobs are kept in ``errands.db`` (the default store; ``$ERRANDS_URL`` picks another).
Stop the server in the middle of a job: the next start runs it. To run the jobs in
a process of their own: ``DEMO_WORKER=0 scripts/demo`` in one terminal and
``.venv/bin/errands worker docs.examples.demo:errands`` in another.
"""

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from errands import BackgroundTasks, Errands, JobRecord

errands = Errands(worker=os.environ.get("DEMO_WORKER", "1") == "1")
PORT = int(os.environ.get("PORT", "8000"))
log = logging.getLogger("demo")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with errands.lifespan(app):
        # A few jobs to look at straight away: once per store (their ids are kept).
        for email in ("ada@example.com", "grace@example.com", "linus@example.com"):
            errands.add_task(send_welcome.options(job_id=f"welcome:{email}"), email)
        log.warning(
            "errands demo on http://127.0.0.1:%d/ (the dashboard: /errands/)  try: curl -X "
            "POST http://127.0.0.1:%d/signup/you@example.com",
            PORT,
            PORT,
        )
        yield


app = FastAPI(title="errands demo", lifespan=lifespan)
# The dashboard of the jobs. auth=None: the demo listens on 127.0.0.1 only; an app that
# others can reach passes auth=("user", "password") or a callable of its own.
app.mount("/errands", errands.dashboard(auth=None))


def write_log(message: str) -> None:
    log.warning(message)


# An explicit name: the same whether this module runs as __main__ (scripts/demo) or is
# imported by `errands worker docs.examples.demo:errands`.
@errands.task(name="send_welcome", retries=3, backoff=0.5, timeout=10)
async def send_welcome(email: str) -> str:
    await asyncio.sleep(1.0)  # talking to a slow mail server
    if random.random() < 0.3:
        raise ConnectionError("the mail server hung up")  # retried with backoff
    return f"welcome sent to {email}"


@app.post("/signup/{email}")
async def signup(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(write_log, f"signup {email}")
    job = tasks.add_task(send_welcome, email)
    return {"job": job.id, "status": f"/jobs/{job.id}"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> JobRecord:
    record = errands.get(job_id)
    if record is None:
        raise HTTPException(404, "no such job")
    return record


@app.post("/signup")
async def signup_form(request: Request, tasks: BackgroundTasks) -> RedirectResponse:
    """The page's form: the same jobs, then the dashboard's page of the mail job."""
    form = parse_qs((await request.body()).decode(errors="replace"))
    email = (form.get("email") or ["someone@example.com"])[0].strip()[:200]
    tasks.add_task(write_log, f"signup {email}")
    job = tasks.add_task(send_welcome, email)
    return RedirectResponse(f"/errands/jobs/{job.id}", status_code=303)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>errands demo</title>
<style>
  body { margin: 0; font: 14px system-ui, sans-serif; display: flex; flex-direction: column;
         height: 100vh; }
  form { display: flex; gap: 10px; align-items: center; padding: 10px 24px;
         background: #eef4ff; border-bottom: 1px solid #c8d8f5; }
  input { font: inherit; padding: 6px 10px; width: 280px; border: 1px solid #b6c4dc;
          border-radius: 6px; }
  button { font: inherit; font-weight: 600; padding: 6px 14px; border-radius: 6px;
           border: 0; background: #1f6feb; color: #fff; cursor: pointer; }
  iframe { flex: 1; border: 0; width: 100%; }
  span { color: #555; }
</style></head>
<body>
<form method="post" action="/signup" target="dashboard">
  <strong>errands demo</strong>
  <label>Sign someone up: <input name="email" type="email" required
    placeholder="you@example.com" value="you@example.com"></label>
  <button type="submit">Sign up</button>
  <span>The welcome mail is a background job: it fails 30 % of the time and is retried.</span>
</form>
<iframe name="dashboard" src="/errands/" title="errands dashboard"></iframe>
</body></html>
"""


@app.get("/", response_class=HTMLResponse)
async def home() -> str:
    """A signup form above the dashboard."""
    return PAGE


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=PORT)
