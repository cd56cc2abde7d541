"""The local backend: this process's worker claims jobs from a ``Store`` (the memory
and SQLite modes are this backend over their own store)."""

from ._backend import LocalBackend
from ._store import ProcessInfo, Store

__all__ = ["LocalBackend", "ProcessInfo", "Store"]
