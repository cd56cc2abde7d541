"""Text cut to fit a message header (Celery mode's stamps)."""

from __future__ import annotations


def cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` in at most about ``limit`` characters, saying how many were cut. A
    traceback keeps its end (where the exception is) and its first line."""
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit:,} characters cut by errands ...]\n"
    if not keep_end:
        return text[:limit] + marker
    first, _, _ = text.partition("\n")
    first = first[: limit // 4]
    return first + marker + text[-(limit - len(first)) :]
