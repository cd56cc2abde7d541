"""The dashboard in your own app: mounted behind HTTP Basic auth, or behind a check of
your own. Serve it with ``uvicorn docs.examples.dashboard:app`` and open /errands/."""

import hmac
import os

from fastapi import FastAPI, Request

from errands import Errands

errands = Errands("memory://")
app = FastAPI(lifespan=errands.lifespan)

# HTTP Basic: the browser asks for the user and password (compared in constant time).
password = os.environ.get("DASHBOARD_PASSWORD", "change me")
app.mount("/errands", errands.dashboard(auth=("admin", password)))


# Or your own scheme: any (request) -> bool, sync or async (False: 403).
def staff_only(request: Request) -> bool:
    token = request.headers.get("x-staff-token", "")
    return hmac.compare_digest(token, os.environ.get("STAFF_TOKEN", "let-me-in"))


app.mount("/ops/errands", errands.dashboard(auth=staff_only))


@errands.task(name="reports.build", retries=2)
def build_report(month: str) -> str:
    return f"report for {month}"
