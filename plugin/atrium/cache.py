"""A bounded least-recently-used cache of byte strings or arrays, by weight.

Shared by the services that keep decoded or encoded pieces of large files: the
slide service's tiles, the signal store's decoded segments. Safe to share between
threads; the application creates each one at start-up (no module-level instances).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["ByteLru"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _weight(value: object) -> int:
    """Bytes a value holds: ``nbytes`` of an array, ``len`` of bytes."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return len(value)  # type: ignore[arg-type]


class ByteLru(Generic[K, V]):
    """Values (``bytes`` or numpy arrays) under keys, at most ``max_bytes`` in all.

    A value larger than ``max_bytes // 8`` is not kept: one huge entry must not
    flush the many small ones that are the point of the cache. Values should be
    treated as immutable (arrays are shared between callers).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, /) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: K, value: V, /) -> None:
        weight = _weight(value)
        if weight > self.max_bytes // 8:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, weight)
            self._bytes += weight
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def discard(self, key: K) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
