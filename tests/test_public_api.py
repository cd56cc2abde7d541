"""The public surface: exactly these names, typed, and one error root."""

import inspect
from pathlib import Path

import errands
from errands import exceptions

PUBLIC = {
    "BackgroundTask",
    "BackgroundTasks",
    "BacklogFull",
    "BrokerUnavailable",
    "ConfigurationError",
    "Errands",
    "ErrandsError",
    "InvalidArguments",
    "InvalidOption",
    "Job",
    "JobLogFilter",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "NotSerializable",
    "PayloadTooLarge",
    "ResultTooLarge",
    "Stats",
    "StoreCorrupt",
    "StoreError",
    "StoreUnwritable",
    "Task",
    "TaskTimeout",
    "Tasks",
    "WaitTimeout",
    "WorkerInfo",
    "cancel_requested",
}

#: What an Errands instance shows: the README documents each.
ERRANDS = {
    "add_task",
    "add_task_in",
    "add_task_in_async",
    "backlog",
    "cancel",
    "cron",
    "dashboard",
    "eager",
    "every",
    "get",
    "jobs",
    "join",
    "lifespan",
    "metrics",
    "purge",
    "retry",
    "run_worker",
    "stats",
    "task",
    "url",
}


def test_the_exported_names_are_exactly_the_public_ones_and_sorted() -> None:
    assert set(errands.__all__) == PUBLIC
    assert errands.__all__ == sorted(errands.__all__)
    for name in errands.__all__:
        assert getattr(errands, name) is not None


def test_an_errands_instance_shows_exactly_the_documented_names() -> None:
    shown = {name for name in dir(errands.Errands("memory://")) if not name.startswith("_")}
    assert shown == ERRANDS
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ERRANDS:
        assert f"errands.{name}" in readme, f"the README does not document errands.{name}"


def test_every_exported_name_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in errands.__all__:
        assert f"`{name}" in readme or f"errands.{name}" in readme, name


def test_every_exception_derives_from_errands_error() -> None:
    for name in exceptions.__all__:
        error = getattr(exceptions, name)
        assert inspect.isclass(error) and issubclass(error, errands.ErrandsError)
        assert name in (exceptions.__doc__ or "")


def test_the_package_ships_py_typed() -> None:
    assert (Path(errands.__file__).parent / "py.typed").exists()


def test_job_status_is_a_str_enum_with_the_five_states() -> None:
    assert [s.value for s in errands.JobStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert errands.JobStatus.QUEUED == "queued"
    assert {s for s in errands.JobStatus if s.finished} == {
        errands.JobStatus.SUCCEEDED,
        errands.JobStatus.FAILED,
        errands.JobStatus.CANCELLED,
    }


def test_the_job_record_has_the_documented_fields() -> None:
    fields = set(errands.JobRecord.__dataclass_fields__)
    assert {
        "id",
        "name",
        "status",
        "attempts",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "durable",
    } <= fields
