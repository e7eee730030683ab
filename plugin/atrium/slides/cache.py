"""The slide service's cache of open readers, by count (its tiles are kept in an
:class:`atrium.cache.ByteLru`).

Bounded, least-recently-used, safe to share between threads; created by the
application at start-up and handed to who needs it (no module-level instance).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

__all__ = ["ReaderCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Closeable(Protocol):
    def close(self) -> None: ...


R = TypeVar("R", bound=Closeable)


@dataclass
class _Entry(Generic[R]):
    reader: R
    borrowers: int = 0
    evicted: bool = False


class ReaderCache(Generic[R]):
    """At most ``max_readers`` open readers, keyed by what identifies one file
    version — e.g. ``(slide_id, storage_name, etag_or_size)``, so a replaced file
    is never read through a stale reader.

    Borrow a reader with ``with cache.borrow(key, open_reader) as reader``. A
    reader is opened once however many threads ask at the same time; the others
    wait for it (an open that fails is tried again by the next caller). An evicted
    or invalidated reader is closed when its last borrower is done with it, never
    under a request that is using it.
    """

    def __init__(self, max_readers: int) -> None:
        if max_readers < 1:
            raise ValueError(f"max_readers must be >= 1, got {max_readers}")
        self.max_readers = max_readers
        self._entries: OrderedDict[Hashable, _Entry[R]] = OrderedDict()
        self._opening: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def _take(self, key: Hashable) -> _Entry[R] | None:
        """The entry for ``key``, borrowed, or None; call with the lock held."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.borrowers += 1
        return entry

    @contextmanager
    def borrow(self, key: Hashable, open_reader: Callable[[], R]) -> Iterator[R]:
        with self._lock:
            entry = self._take(key)
            opening = self._opening.setdefault(key, threading.Lock()) if entry is None else None
        if opening is not None:
            entry = self._open(key, open_reader, opening)
        assert entry is not None
        try:
            yield entry.reader
        finally:
            with self._lock:
                entry.borrowers -= 1
                done = entry.evicted and entry.borrowers == 0
            if done:
                _close(entry.reader)

    def _open(self, key: Hashable, open_reader: Callable[[], R],
              opening: threading.Lock) -> _Entry[R]:
        with opening:
            with self._lock:
                entry = self._take(key)
            if entry is not None:
                return entry
            try:
                reader = open_reader()
            except BaseException:
                with self._lock:
                    self._opening.pop(key, None)
                raise
            entry = _Entry(reader, borrowers=1)
            with self._lock:
                self._opening.pop(key, None)
                self._entries[key] = entry
                evicted = []
                while len(self._entries) > self.max_readers:
                    _, old = self._entries.popitem(last=False)
                    evicted.append(old)
                to_close = self._evict(evicted)
        for old in to_close:
            _close(old.reader)
        return entry

    def _evict(self, entries: list[_Entry[R]]) -> list[_Entry[R]]:
        """Mark entries evicted; those nobody borrows are returned to close now.
        Call with the lock held."""
        for entry in entries:
            entry.evicted = True
        return [entry for entry in entries if entry.borrowers == 0]

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key`` (its file was replaced or deleted)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            to_close = self._evict([entry] if entry is not None else [])
        for old in to_close:
            _close(old.reader)

    def clear(self) -> None:
        """Forget every reader (shutdown)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            to_close = self._evict(entries)
        for old in to_close:
            _close(old.reader)

    def __len__(self) -> int:
        return len(self._entries)


def _close(reader: Closeable) -> None:
    # A reader that fails to close must not fail the request that evicted it.
    try:
        reader.close()
    except Exception:
        log.warning("slide reader failed to close", exc_info=True)
