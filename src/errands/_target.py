"""Which Errands instance a command of the command line names (its ``TARGET``):
``module:attribute``, a store URL, ``$ERRANDS_URL``, or ``./errands.db``; and how a
command fails (a message on stderr, an exit code)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from ._errands import Errands
from .exceptions import ErrandsError

err = Console(stderr=True, highlight=False, soft_wrap=True)

TARGET_HELP = (
    "module:attribute naming an Errands instance (app.main:errands), or a store URL "
    "(sqlite:///path/to.db, celery://module:attribute); default: $ERRANDS_URL, then "
    "./errands.db if it exists"
)
_MODULE_ATTRIBUTE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"errands: {message}", markup=False)
    raise typer.Exit(code)


def is_target(value: str) -> bool:
    """Whether ``value`` names an Errands instance or a store (not a job id): a URL, or
    ``module:attribute`` whose module can be found (job ids may hold colons too)."""
    if "://" in value:
        return True
    if not _MODULE_ATTRIBUTE.match(value):
        return False
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.util.find_spec(value.partition(":")[0]) is not None
    except (ImportError, ValueError):
        return False


def open_target(target: str | None) -> Errands:
    """The Errands instance to look at, as the module's docstring says; exits 2 with
    what to pass when there is none."""
    if target is None:
        target = os.environ.get("ERRANDS_URL") or None
        if target is None:
            if not Path("errands.db").exists():
                fail(
                    f"no target, no $ERRANDS_URL, and no errands.db in {os.getcwd()}: pass "
                    f"module:attribute (app.main:errands) or a store URL "
                    f"(sqlite:///path/to.db)",
                    2,
                )
            target = "sqlite:///errands.db"
    if target.startswith("memory:"):
        fail(
            f"{target} keeps its jobs in the memory of the process that made them; there is "
            f"nothing to see from here: pass the app (module:attribute) of a SQLite or "
            f"Celery store",
            2,
        )
    if target.startswith("sqlite:"):
        path = target.removeprefix("sqlite:///").removeprefix("sqlite://")
        if not Path(path).exists():
            fail(f"no store at {Path(path).resolve()} (from {target}): is the path right?", 2)
    if "://" in target:
        try:
            return Errands(target, worker=False)
        except ErrandsError as exc:
            fail(str(exc), 2)
    if not _MODULE_ATTRIBUTE.match(target):
        fail(f"{target!r} is neither module:attribute nor a store URL", 2)
    from ._worker_cli import load

    try:
        found = load(target)
    except SystemExit as exc:
        err.print(str(exc.code), markup=False)
        raise typer.Exit(2) from None
    if found.url.startswith("memory:"):
        fail(
            f"{target} keeps its jobs in memory ({found.url}), in the process that made "
            f"them; there is nothing to see from here",
            2,
        )
    return found


def split_target(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[TARGET] ID...``: the target if the first names one, and the ids."""
    if len(args) > 1 and is_target(args[0]):
        return args[0], list(args[1:])
    if len(args) == 1 and "://" in args[0]:
        fail(f"{args[0]} is a store: give the job id(s) after it", 2)
    return None, list(args)
