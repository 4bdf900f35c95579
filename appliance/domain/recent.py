"""A bounded memory of what was seen lately: a dict in insertion order whose oldest keys
are forgotten a batch at a time (issue 21)."""

from __future__ import annotations

from itertools import islice
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def forget_oldest(seen: dict[K, V], keep: int) -> dict[K, V]:
    """`seen` itself while it holds at most a quarter more than `keep`, else a new dict of
    its newest `keep`. Deleting the oldest key one at a time leaves a hole at the front
    that every later lookup of the oldest skips (about a microsecond at 1 024 keys), and
    keeps a table twice the size until the dict is rebuilt."""
    extra = len(seen) - keep
    if extra <= keep // 4:
        return seen
    return dict(islice(seen.items(), extra, None))
