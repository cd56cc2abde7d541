"""Testing an app that uses errands: eager mode, or join()."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import BackgroundTasks, Errands

errands = Errands("memory://")
app = FastAPI(lifespan=errands.lifespan)
greeted: list[str] = []


@errands.task(retries=2)
def greet(name: str) -> str:
    greeted.append(name)
    return f"hello {name}"


@app.post("/greet/{name}")
def greet_endpoint(name: str, tasks: BackgroundTasks) -> dict[str, str]:
    return {"job": tasks.add_task(greet, name).id}


def test_tasks_have_run_when_the_call_returns() -> None:
    errands.eager = True  # a request's tasks finish before TestClient returns
    with TestClient(app) as client:
        job_id = client.post("/greet/ada").json()["job"]
    record = errands.get(job_id)
    assert record is not None and record.result == "hello ada"
    assert greeted == ["ada"]


if __name__ == "__main__":
    test_tasks_have_run_when_the_call_returns()
    print("ok")
