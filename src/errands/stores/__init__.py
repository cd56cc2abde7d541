"""Store implementations, one module each. See ``errands._store.Store`` for the protocol."""

from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore"]
