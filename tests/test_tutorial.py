"""FastAPI's background-tasks tutorial runs with only the import changed, and gives
the same results as FastAPI's own BackgroundTasks, with no Errands instance at all."""

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
ERRANDS_IMPORT = "from errands import BackgroundTasks"
FASTAPI_IMPORT = "from fastapi import BackgroundTasks"


def load(name: str, flavour: str) -> ModuleType:
    source = (EXAMPLES / f"{name}.py").read_text()
    assert ERRANDS_IMPORT in source
    if flavour == "fastapi":
        source = source.replace(ERRANDS_IMPORT, FASTAPI_IMPORT)
    module = ModuleType(f"{name}_{flavour}")
    exec(compile(source, str(EXAMPLES / f"{name}.py"), "exec"), module.__dict__)
    return module


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


def run_001(app: FastAPI, where: Path) -> tuple[Any, str]:
    client = TestClient(app)
    response = client.post("/send-notification/foo@example.com")
    return response.json(), (where / "log.txt").read_text()


def run_002(app: FastAPI, where: Path) -> tuple[Any, str]:
    client = TestClient(app)
    response = client.post("/send-notification/foo@example.com?q=some-query")
    return response.json(), (where / "log.txt").read_text()


@pytest.mark.parametrize("flavour", ["fastapi", "errands"])
def test_tutorial001_writes_the_notification_before_testclient_returns(
    flavour: str, in_tmp: Path
) -> None:
    app = load("tutorial001", flavour).app
    body, log = run_001(app, in_tmp)
    assert body == {"message": "Notification sent in the background"}
    assert log == "notification for foo@example.com: some notification"


@pytest.mark.parametrize("flavour", ["fastapi", "errands"])
def test_tutorial002_dependency_and_endpoint_share_one_instance_in_order(
    flavour: str, in_tmp: Path
) -> None:
    app = load("tutorial002", flavour).app
    body, log = run_002(app, in_tmp)
    assert body == {"message": "Message sent"}
    # The dependency's task was added first, and runs first.
    assert log == "found query: some-query\nmessage to foo@example.com\n"


@pytest.mark.parametrize("name", ["tutorial001", "tutorial002"])
def test_openapi_schema_is_the_same_as_with_fastapis_own(name: str) -> None:
    ours = load(name, "errands").app.openapi()
    theirs = load(name, "fastapi").app.openapi()
    assert ours == theirs
    operation = ours["paths"]["/send-notification/{email}"]["post"]
    names = [p["name"] for p in operation.get("parameters", [])]
    assert "background_tasks" not in names
    assert "requestBody" not in operation
