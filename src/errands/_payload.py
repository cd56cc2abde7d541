"""Arguments and results of registered tasks travel as JSON, never pickle.

The check is strict so that what a task receives is exactly what was given, in
every store: dict keys must be strings (JSON would turn ``1`` into ``"1"``), floats
must be finite. Tuples are accepted and arrive as lists.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

from .exceptions import InvalidArguments, NotSerializable

_SCALARS = (str, int, bool, type(None))


def _problem(value: Any, path: str) -> str | None:
    """Where in ``value`` JSON would fail or change the data, or None if nowhere."""
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot carry"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if found := _problem(item, f"{path}[{index}]"):
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (
                    f"{path} has a key {key!r} of type {type(key).__name__}; "
                    "JSON object keys must be str"
                )
            if found := _problem(item, f"{path}[{key!r}]"):
                return found
        return None
    hint = ""
    if hasattr(value, "model_dump"):
        hint = " (pass value.model_dump(mode='json') and rebuild the model in the task)"
    elif hasattr(value, "isoformat"):
        hint = " (pass value.isoformat() and parse it in the task)"
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return f"{path} is a {kind}, which is not JSON-serialisable{hint}"


#: Ints that JSON carries as they are in every store.
_INT_RANGE = range(-(2**63), 2**63)


def plain_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """If every argument is a plain scalar (the common case), an upper bound of their
    size as JSON; else None. Plain arguments need no JSON round trip to be checked."""
    size = 16
    for value in (*args, *kwargs.values()):
        kind = type(value)
        if kind is str:
            size += 12 * len(value) + 3  # an astral character escapes to 12 bytes
        elif kind is int:
            if value not in _INT_RANGE:
                return None
            size += 21
        elif kind is float:
            if not math.isfinite(value):
                return None
            size += 25
        elif kind is bool or value is None:
            size += 6
        else:
            return None
    return size + sum(len(key) * 12 + 4 for key in kwargs)


def encode_arguments(
    task_name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Check ``args``/``kwargs`` against the task and return them as JSON text."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArguments(f"task {task_name!r} cannot take these arguments: {exc}") from None
    for name, value in bound.arguments.items():
        if found := _problem(value, f"argument {name!r}"):
            raise NotSerializable(f"task {task_name!r}: {found}")
    return json.dumps([list(args), kwargs], separators=(",", ":"), allow_nan=False)


def decode_arguments(text: str) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = json.loads(text)
    return args, kwargs


def encode_result(task_name: str, result: Any) -> Any:
    """The result as JSON gives it back (what every store returns)."""
    if plain_size((result,), {}) is not None:
        return result  # a plain scalar: JSON gives it back as it is
    if found := _problem(result, "the result"):
        raise NotSerializable(f"task {task_name!r}: {found}; return JSON data instead")
    return json.loads(json.dumps(result, allow_nan=False))
