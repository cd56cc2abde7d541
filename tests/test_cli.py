"""The ``errands`` command, run as a user runs it: in a process of its own, in their project."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import errands
from tests.conftest import errands_command

ENV = {name: value for name, value in os.environ.items() if name != "ERRANDS_URL"}


def write(project: Path, **modules: str) -> None:
    for name, source in modules.items():
        (project / f"{name}.py").write_text(textwrap.dedent(source))


run = errands_command


APP = """
    from errands import Errands

    errands = Errands("sqlite:///jobs.db")
    app = object()
"""


def test_a_missing_attribute_is_named_with_the_instances_the_module_has(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    done = run(tmp_path, "worker", "app:nosuch")
    assert done.returncode == 1
    assert "module 'app' has no attribute 'nosuch'" in done.stderr
    assert "app:errands" in done.stderr
    assert "NoneType" not in done.stderr


def test_a_target_that_is_not_an_errands_instance_says_what_it_is(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    done = run(tmp_path, "worker", "app:app")
    assert done.returncode == 1
    assert "'app:app' is an object, not an Errands instance" in done.stderr
    assert "app:errands" in done.stderr


def test_an_error_in_the_users_module_shows_their_traceback_then_a_summary(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        app="""
            import settings

            from errands import Errands

            errands = Errands("sqlite:///jobs.db")
        """,
        settings="""
            def read():
                return undefined_name

            read()
        """,
    )
    done = run(tmp_path, "worker", "app:errands")
    assert done.returncode == 1
    traceback, summary = done.stderr.rstrip().rsplit("\n", 1)
    assert traceback.startswith("Traceback (most recent call last):")
    assert f'File "{tmp_path / "app.py"}", line 2' in traceback
    assert f'File "{tmp_path / "settings.py"}", line 3, in read' in traceback
    assert "_modes.py" not in traceback and "importlib" not in traceback
    assert summary == (
        "errands: could not import 'app:errands': "
        "NameError: name 'undefined_name' is not defined (traceback above)"
    )


def test_a_missing_dependency_of_the_users_module_shows_where_it_is_imported(
    tmp_path: Path,
) -> None:
    write(tmp_path, app="import not_installed_anywhere\n")
    done = run(tmp_path, "worker", "app:errands")
    assert done.returncode == 1
    assert f'File "{tmp_path / "app.py"}", line 1' in done.stderr
    assert done.stderr.rstrip().endswith(
        "ModuleNotFoundError: No module named 'not_installed_anywhere' (traceback above)"
    )


def test_a_module_that_does_not_exist_is_one_line_naming_the_current_directory(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, "worker", "nowhere.app:errands")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "no module named 'nowhere'" in done.stderr
    assert f"current directory, {tmp_path}" in done.stderr


@pytest.mark.parametrize(
    "option", [["--concurrency", "0"], ["--concurrency", "-3"], ["--processes", "0"]]
)
def test_a_count_below_one_is_a_usage_error_naming_the_option(
    tmp_path: Path, option: list[str]
) -> None:
    write(tmp_path, app=APP)
    done = run(tmp_path, "worker", "app:errands", *option)
    assert done.returncode == 2
    assert f"error: argument {option[0]}: expected a whole number, 1 or more" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    done = run(tmp_path, "worker", "app:errands", "--log-level", "loud")
    assert done.returncode == 2
    assert "error: argument --log-level: invalid choice: 'loud'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_target_is_a_usage_error(tmp_path: Path) -> None:
    done = run(tmp_path, "worker", "app.py")
    assert done.returncode == 2
    assert "error: argument module:attribute: expected e.g. app.main:errands" in done.stderr


def test_celery_options_for_an_instance_not_on_celery_are_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    done = run(tmp_path, "worker", "app:errands", "--", "-Q", "emails")
    assert done.returncode == 2
    assert "app:errands is not on Celery" in done.stderr


def test_version_prints_the_version(tmp_path: Path) -> None:
    done = run(tmp_path, "--version")
    assert (done.returncode, done.stdout) == (0, f"errands {errands.__version__}\n")


def test_no_arguments_prints_usage(tmp_path: Path) -> None:
    done = run(tmp_path)
    assert done.returncode == 2
    assert "Usage: errands" in done.stdout + done.stderr and "worker" in done.stdout


def test_worker_help_describes_each_option(tmp_path: Path) -> None:
    done = run(tmp_path, "worker", "--help")
    assert done.returncode == 0
    help = " ".join(done.stdout.split())
    assert "SIGINT or SIGTERM" in help
    assert "module:attribute the Errands instance, e.g. app.main:errands" in help
    assert "--concurrency N jobs this worker runs at once" in help
    assert "--processes N process=True tasks running at once" in help
    assert "--log-level LEVEL the least severe messages logged: debug, info, warning" in help
    assert "options after -- go to the Celery worker" in help


def test_a_memory_instance_is_refused_with_what_to_use_instead(tmp_path: Path) -> None:
    write(tmp_path, app='from errands import Errands\n\njobs = Errands("memory://")\n')
    done = run(tmp_path, "worker", "app:jobs")
    assert done.returncode == 1
    assert "keeps its jobs in this process's memory (memory://)" in done.stderr
    assert "sqlite:///" in done.stderr
    assert "FastAPI(lifespan=jobs.lifespan)" in done.stderr


def test_a_worker_logs_each_line_with_a_timestamp_a_level_and_its_logger(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "app:errands", "--log-level", "INFO"],
            cwd=tmp_path,
            env=ENV,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "worker running" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    line = next(line for line in log.read_text().splitlines() if "worker running" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO errands: ", line), line
    assert "errands: errands:" not in log.read_text()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///garbage.db", "is not a database"),
        ("sqlite:///nowhere/jobs.db", "does not exist: create it"),
    ],
)
def test_a_store_that_cannot_work_ends_the_worker_with_one_line(
    tmp_path: Path, url: str, problem: str
) -> None:
    (tmp_path / "garbage.db").write_bytes(b"not sqlite " * 500)
    write(tmp_path, app=f"from errands import Errands\nerrands = Errands({url!r})\n")
    done = run(tmp_path, "worker", "app:errands")
    assert done.returncode == 1
    assert problem in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_worker_says_where_its_jobs_are_with_the_files_absolute_path(tmp_path: Path) -> None:
    write(tmp_path, app=APP)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "app:errands"],
            cwd=tmp_path,
            env=ENV,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "worker running" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert f"sqlite:///jobs.db ({tmp_path / 'jobs.db'})" in log.read_text()


def test_a_task_registered_under_main_is_named_in_a_warning(tmp_path: Path) -> None:
    script = (
        "from errands import Errands\n"
        "errands = Errands('sqlite:///jobs.db')\n"
        "@errands.task\n"
        "def send_welcome(email: str) -> None: ...\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "'__main__.send_welcome' is registered under __main__" in done.stderr
    assert "name='send_welcome'" in done.stderr
