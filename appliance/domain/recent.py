"""Bounded memories of what was seen lately (issue 21): a dict in insertion order whose
oldest keys are forgotten a batch at a time, and 64-bit hashes packed in groups."""

from __future__ import annotations

from itertools import islice
from struct import Struct, pack
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: a hash as it is kept: 8 bytes, `hash()`'s signed 64-bit range
_HASH = Struct("<q")
_pack = _HASH.pack
_WIDTH = _HASH.size


def forget_oldest(seen: dict[K, V], keep: int) -> dict[K, V]:
    """`seen` itself while it holds at most a quarter more than `keep`, else a new dict of
    its newest `keep`. Deleting the oldest key one at a time leaves a hole at the front
    that every later lookup of the oldest skips (about a microsecond at 1 024 keys), and
    keeps a table twice the size until the dict is rebuilt."""
    extra = len(seen) - keep
    if extra <= keep // 4:
        return seen
    return dict(islice(seen.items(), extra, None))


class GroupedHashes:
    """The 64-bit hashes of the latest `keep` things seen, in groups of things seen
    together (a charge point's samples, by transaction and timestamp: a MeterValues' six
    share one): one dict entry and one bytes object per group rather than an entry and an
    int per hash, about a third of the memory (issue 21). Forgets its oldest groups a
    quarter at a time, as `forget_oldest` does."""

    __slots__ = ("count", "groups", "keep")

    def __init__(self, keep: int) -> None:
        self.groups: dict[int, bytes] = {}
        self.count = 0
        self.keep = keep

    def has(self, group: int, key: int) -> bool:
        packed = self.groups.get(group)
        if packed is None:
            return False
        wanted = _pack(key)
        at = packed.find(wanted)
        while at % _WIDTH:  # a match across two hashes; -1 % 8 is 7: not found
            if at < 0:
                return False
            at = packed.find(wanted, at + 1)
        return at >= 0

    def add(self, group: int, keys: list[int]) -> None:
        packed = pack(f"<{len(keys)}q", *keys)  # `struct` caches the format
        known = self.groups.get(group)
        self.groups[group] = packed if known is None else known + packed
        self.count += len(keys)
        if self.count > self.keep + self.keep // 4:
            self._forget()

    def _forget(self) -> None:
        kept: list[tuple[int, bytes]] = []
        room = self.keep
        for group, packed in reversed(self.groups.items()):
            count = len(packed) // _WIDTH
            if count > room:
                if not kept:  # one group larger than all: its newest
                    kept.append((group, packed[-room * _WIDTH :]))
                    room = 0
                break
            kept.append((group, packed))
            room -= count
        self.groups = dict(reversed(kept))
        self.count = self.keep - room
