"""The slide caches: tiles bounded by bytes, open readers bounded by count."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from atrium.cache import ByteLru
from atrium.slides.cache import ReaderCache


def test_the_least_recently_used_tiles_go_first_when_bytes_run_out() -> None:
    cache: ByteLru[str, bytes] = ByteLru(800)
    for key in "abcd":
        cache.put(key, bytes(100))
    assert cache.get("a") == bytes(100)  # "a" is now the most recent
    for key in "efghi":
        cache.put(key, bytes(100))
    assert cache.nbytes <= 800
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("i") is not None


def test_replacing_a_tile_counts_its_bytes_once() -> None:
    cache: ByteLru[str, bytes] = ByteLru(1000)
    cache.put("a", bytes(100))
    cache.put("a", bytes(50))
    assert (len(cache), cache.nbytes, cache.get("a")) == (1, 50, bytes(50))
    cache.discard("a")
    assert (len(cache), cache.nbytes) == (0, 0)


def test_a_value_larger_than_an_eighth_of_the_cache_is_not_kept() -> None:
    cache: ByteLru[str, bytes] = ByteLru(800)
    cache.put("small", bytes(100))
    cache.put("huge", bytes(101))
    assert cache.get("huge") is None and cache.get("small") is not None


def test_arrays_weigh_their_pixels() -> None:
    cache: ByteLru[tuple[int, int], np.ndarray] = ByteLru(10 * 64 * 64 * 3)
    cache.put((0, 0), np.zeros((64, 64, 3), np.uint8))
    assert cache.nbytes == 64 * 64 * 3
    cache.clear()
    assert cache.nbytes == 0 and cache.get((0, 0)) is None


def test_concurrent_use_keeps_the_byte_bound() -> None:
    cache: ByteLru[int, bytes] = ByteLru(10_000)

    def work(seed: int) -> None:
        for i in range(2000):
            key = (seed * 7919 + i) % 300
            if cache.get(key) is None:
                cache.put(key, bytes(key % 1000 + 1))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(8)))
    assert cache.nbytes <= 10_000
    assert cache.nbytes == sum(len(cache.get(k) or b"") for k in range(300))
    assert cache.hits > 0 and cache.misses > 0


class FakeReader:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_a_reader_is_opened_once_and_reused() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(2)
    opened: list[str] = []

    def opener(name: str) -> FakeReader:
        opened.append(name)
        return FakeReader(name)

    with cache.borrow(("slide-1", "a.svs"), lambda: opener("a")) as first:
        pass
    with cache.borrow(("slide-1", "a.svs"), lambda: opener("a")) as again:
        pass
    assert first is again and opened == ["a"] and not first.closed


def test_the_least_recently_used_reader_is_closed_on_eviction() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(2)
    readers = {}
    for key in ("a", "b", "a", "c"):
        with cache.borrow(key, lambda key=key: FakeReader(key)) as reader:  # type: ignore[misc]
            readers[key] = reader
    assert readers["b"].closed and not readers["a"].closed and not readers["c"].closed
    assert len(cache) == 2


def test_a_reader_in_use_is_closed_only_when_its_borrower_is_done() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(1)
    with cache.borrow("a", lambda: FakeReader("a")) as busy:
        with cache.borrow("b", lambda: FakeReader("b")):
            pass
        assert not busy.closed  # evicted, but still being read
    assert busy.closed


def test_concurrent_borrowers_of_a_new_slide_open_it_once() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(4)
    opened: list[FakeReader] = []
    gate = threading.Barrier(6)

    def opener() -> FakeReader:
        reader = FakeReader("slow")
        opened.append(reader)
        return reader

    def borrow(_: int) -> FakeReader:
        gate.wait(timeout=5)
        with cache.borrow("slide", opener) as reader:
            return reader

    with ThreadPoolExecutor(6) as pool:
        readers = list(pool.map(borrow, range(6)))
    assert len(opened) == 1 and all(reader is opened[0] for reader in readers)


def test_a_failed_open_is_tried_again_by_the_next_borrower() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(2)

    def failing() -> FakeReader:
        raise OSError("storage unreachable")

    with pytest.raises(OSError), cache.borrow("a", failing):
        pass
    with cache.borrow("a", lambda: FakeReader("a")) as reader:
        assert reader.name == "a"


def test_invalidate_and_clear_close_the_readers() -> None:
    cache: ReaderCache[FakeReader] = ReaderCache(4)
    with cache.borrow("a", lambda: FakeReader("a")) as a:
        pass
    with cache.borrow("b", lambda: FakeReader("b")) as b:
        pass
    cache.invalidate("a")
    assert a.closed and not b.closed and len(cache) == 1
    with cache.borrow("a", lambda: FakeReader("a2")) as fresh:
        assert fresh.name == "a2"
    cache.clear()
    assert b.closed and fresh.closed and len(cache) == 0


def test_a_reader_failing_to_close_does_not_fail_the_borrower() -> None:
    class Stubborn(FakeReader):
        def close(self) -> None:
            raise RuntimeError("cannot close")

    cache: ReaderCache[FakeReader] = ReaderCache(1)
    with cache.borrow("a", lambda: Stubborn("a")):
        pass
    with cache.borrow("b", lambda: FakeReader("b")) as reader:
        assert reader.name == "b"
