"""Store implementations, one module each. See ``errands._store.Store`` for the protocol."""

from .memory import MemoryStore

__all__ = ["MemoryStore"]
