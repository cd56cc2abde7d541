"""mypy checks add_task's arguments against the function (ParamSpec)."""

import textwrap
from pathlib import Path

from mypy import api

SNIPPET = """
from errands import BackgroundTasks, Errands, Job

errands = Errands("memory://")

@errands.task
async def send(email: str, retries: int = 0) -> str:
    return email

def plain(n: int) -> None: ...

def endpoint(tasks: BackgroundTasks) -> None:
    ok: Job[str] = tasks.add_task(send, "a@b.c", retries=2)
    tasks.add_task(plain, 1)
    tasks.add_task(send, 42)                 # line 15: wrong type
    tasks.add_task(plain)                    # line 16: missing argument
    errands.add_task(send, "x", nope=1)      # line 17: unknown keyword
    reveal_type(errands.add_task(plain, 1))  # line 18
    later: Job[str] = tasks.add_task(send.options(delay=60), "a@b.c")
    tasks.add_task(send.options(delay=60), 42)  # line 20: wrong type, options or not
"""


def test_mypy_checks_add_task_arguments_against_the_function(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(SNIPPET))
    out, _, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    assert lines == [15, 16, 17, 20], out
    assert 'Revealed type is "errands._job.Job[None]"' in out
    assert status == 1
