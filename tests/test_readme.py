"""Every Python snippet of the README runs as pasted: it either runs on its own, or it
is an excerpt, word for word, of an example under docs/examples that the tests run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
EXCERPT = re.compile(r"# (docs/examples/\w+\.py)\n")


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.splitlines()[0][:40] for s in SNIPPETS])
def test_a_readme_snippet_runs_as_pasted(snippet: str, tmp_path: Path) -> None:
    if found := EXCERPT.match(snippet):
        example = (ROOT / found.group(1)).read_text()
        assert snippet[found.end() :] in example, f"not an excerpt of {found.group(1)}"
        return
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_URL"}
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,  # a default store lands here, not in the repository
        env={**env, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_example_the_readme_quotes_is_run_by_the_tests() -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for snippet in SNIPPETS:
        if found := EXCERPT.match(snippet):
            module = Path(found.group(1)).stem
            run = rf"examples(\.| import ){module}\b|\"{module}\.py\""
            assert re.search(run, tests), f"no test runs docs/examples/{module}.py"
