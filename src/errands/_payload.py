"""Arguments and results of registered tasks travel as JSON, never pickle.

The check is strict so that what a task receives is exactly what was given, in
every store: dict keys must be strings (JSON would turn ``1`` into ``"1"``), floats
must be finite, ints must have no more digits than the interpreter writes and reads
back, and data may nest at most ``MAX_DEPTH`` levels. Tuples are accepted and
arrive as lists.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
from typing import Any

from ._tuning import MAX_DEPTH
from .exceptions import InvalidArguments, NotSerializable, ResultTooLarge

_NONE = type(None)
_PLAIN = frozenset({str, bool, _NONE})

#: Ints of at most this many bits have at most 640 digits, fewer than any limit
#: ``sys.set_int_max_str_digits`` accepts: they need no digit count.
_SAFE_BITS = (10**sys.int_info.str_digits_check_threshold).bit_length() - 1

#: A container being checked: (the container, the node holding it, its key there).
_Node = tuple[Any, "_Node | None", Any]


@functools.lru_cache(maxsize=4)
def _power_of_ten(exponent: int) -> int:
    return int(10**exponent)  # int ** int is typed Any (a negative power is a float)


def _int_digits_limit(value: int) -> int:
    """The interpreter's digit limit if ``value`` has more digits, else 0.

    Such an int is what ``json.dumps`` cannot write, nor ``json.loads`` read back.
    """
    if value.bit_length() <= _SAFE_BITS:
        return 0
    limit = sys.get_int_max_str_digits()
    return limit if limit and abs(value) >= _power_of_ten(limit) else 0


def _scalar_problem(value: Any) -> str | None:
    """What is wrong with ``value`` (not a list, tuple or dict) as JSON, or None."""
    if isinstance(value, str | _NONE):
        return None
    if isinstance(value, int):  # bools too
        if limit := _int_digits_limit(value):
            return (
                f"is an int of more than {limit:,} digits, more than this interpreter "
                "writes or reads back as JSON (sys.get_int_max_str_digits()); pass it as "
                "a string, e.g. hex(value), and rebuild it in the task with int(text, 16)"
            )
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is {value!r}, which JSON cannot carry"
    hint = ""
    if hasattr(value, "model_dump"):
        hint = " (pass value.model_dump(mode='json') and rebuild the model in the task)"
    elif hasattr(value, "isoformat"):
        hint = " (pass value.isoformat() and parse it in the task)"
    elif isinstance(value, bytes | bytearray):
        hint = " (decode it to str, or pass base64.b64encode(value).decode())"
    elif isinstance(value, set | frozenset):
        hint = " (pass a list, e.g. sorted(value))"
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return f"is a {kind}, which is not JSON-serialisable{hint}"


def _chain(node: _Node) -> list[_Node]:
    """The containers from the argument down to ``node``."""
    chain: list[_Node] = []
    at: _Node | None = node
    while at is not None:
        chain.append(at)
        at = at[1]
    chain.reverse()
    return chain


def _where(path: str, chain: list[_Node], key: Any = None) -> str:
    """``path`` followed by the keys leading through ``chain`` (and then ``key``)."""
    keys = [f"[{node[2]!r}]" for node in chain[1:]]
    if key is not None:
        keys.append(f"[{key!r}]")
    if len(keys) > 12:  # a path hundreds of levels long says less than its length
        keys = [*keys[:6], f"...({len(keys) - 9} more)...", *keys[-3:]]
    return path + "".join(keys)


def _too_deep(node: _Node, path: str) -> str:
    chain = _chain(node)
    seen: dict[int, int] = {}
    for index, (container, _, _) in enumerate(chain):
        if (first := seen.setdefault(id(container), index)) != index:
            # Data that contains itself nests without end; json.dumps would say
            # "Circular reference detected", which names neither task nor argument.
            return (
                f"{_where(path, chain[: index + 1])} is {_where(path, chain[: first + 1])} "
                "itself; JSON cannot carry data that contains itself"
            )
    return (
        f"{path} nests lists and dicts more than {MAX_DEPTH} levels deep (at "
        f"{_where(path, chain)}), deeper than JSON data travels; flatten it, or store "
        "it elsewhere and pass a reference to it"
    )


def _problem(value: Any, path: str) -> str | None:
    """Where in ``value`` JSON would fail or change the data, or None if nowhere.

    A loop over an explicit stack rather than recursion: data nested deeper than the
    interpreter's stack must be refused, not crash the check.
    """
    if not isinstance(value, list | tuple | dict):
        found = _scalar_problem(value)
        return f"{path} {found}" if found else None
    stack: list[tuple[_Node, int]] = [((value, None, None), 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return _too_deep(node, path)
        container = node[0]
        if isinstance(container, dict):
            for key in container:
                if not isinstance(key, str):
                    return (
                        f"{_where(path, _chain(node))} has a key {key!r} of type "
                        f"{type(key).__name__}; JSON object keys must be str"
                    )
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            # The common cases first, with no call.
            kind = type(item)
            if kind in _PLAIN:
                continue
            if kind is int:
                if item.bit_length() <= _SAFE_BITS:
                    continue
            elif kind is float and math.isfinite(item):
                continue
            if isinstance(item, list | tuple | dict):
                stack.append(((item, node, key), depth + 1))
            elif found := _scalar_problem(item):
                return f"{_where(path, _chain(node), key)} {found}"
    return None


#: Ints that JSON carries as they are in every store.
_INT_RANGE = range(-(2**63), 2**63)


def plain_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """If every argument is a plain scalar (the common case), an upper bound of their
    size as JSON; else None. Plain arguments need no JSON round trip to be checked."""
    size = 16
    for value in (*args, *kwargs.values()) if kwargs else args:
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
    return size + sum(len(key) * 12 + 4 for key in kwargs) if kwargs else size


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


def encode_result(task_name: str, result: Any, max_result: int | None = None) -> Any:
    """The result as JSON gives it back (what every store returns).

    ``max_result`` is the most bytes of JSON it may take (None: no limit).
    """
    if result is None and (max_result is None or max_result >= 4):
        return None  # (the common case: "null")
    bound = plain_size((result,), {})
    if bound is not None:  # a plain scalar: JSON gives it back as it is
        if max_result is None or bound <= max_result:
            return result  # not encoded just to be measured
        text = json.dumps(result, separators=(",", ":"))
    else:
        if found := _problem(result, "the result"):
            raise NotSerializable(f"task {task_name!r}: {found}; return JSON data instead")
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    # ASCII (json.dumps escapes the rest): as many bytes as characters.
    if max_result is not None and len(text) > max_result:
        raise ResultTooLarge(
            f"task {task_name!r}: its result is {len(text):,} bytes as JSON, over "
            f"max_result={max_result:,}; store large results elsewhere (a file, a table) "
            "and return a reference to it, or raise max_result"
        )
    return result if bound is not None else json.loads(text)
