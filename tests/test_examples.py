"""The examples under docs/examples run as shown."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("testing.py", "ok"),
        ("script.py", "['img0.png@320', 'img1.png@320', 'img2.png@320']"),
    ],
)
def test_runnable_examples_print_what_the_docs_say(example: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / example)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_the_testing_example_passes_under_pytest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "docs" / "examples" / "testing.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
