"""The local backend: this process's worker claims jobs from a store (memory, SQLite)."""
