"""The memory mode: jobs live in this process and die with it."""

from ._store import MemoryStore

__all__ = ["MemoryStore"]
