"""Byte ranges of a resumable upload: the ``Content-Range`` of one chunk, and the
arithmetic of the chunks received so far. Pure: no I/O, no HTTP objects.

Inside this module a range is a half-open ``(start, end)`` pair — ``end``
exclusive — so its length is ``end - start`` and neighbours share a bound. HTTP
writes ranges inclusively (``Content-Range: bytes 0-1023/4096`` is the first KiB),
and so does the API's ``missing`` list: :func:`inclusive` converts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "ContentRange", "Incomplete", "Range", "RangeError", "cover", "describe", "inclusive",
    "missing", "parse_content_range", "received", "union",
]

Range = tuple[int, int]
"""``(start, end)``: bytes ``start`` to ``end - 1``."""

_DIGITS = re.compile(r"\d{1,19}")  # up to 9.2 EB: every offset fits a bigint
_FORM = "'bytes START-END/SIZE' (END inclusive, e.g. 'bytes 0-1048575/5000000')"


class RangeError(ValueError):
    """A ``Content-Range`` that names no usable chunk. ``reason`` completes the
    sentence "Content-Range ..." and says what to send; it quotes numbers only,
    never the header."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Content-Range {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ContentRange:
    """One chunk's place in the file: bytes ``start`` to ``end - 1`` of ``total``."""

    start: int
    end: int  # exclusive
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.total}"


def _number(text: str, what: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise RangeError(f"{what} must be a whole number of bytes, at most 19 digits; "
                         f"send {_FORM}")
    return int(text)


def parse_content_range(header: str | None) -> ContentRange:
    """The chunk a ``Content-Range`` header names.

    Raises
    ------
    RangeError
        When the header is missing or malformed, uses another unit, leaves the
        total unknown (``*``), or names bytes that are not inside the total. The
        message quotes numbers only, never the header itself.
    """
    text = (header or "").strip()
    if not text:
        raise RangeError(f"is required: send {_FORM} with every chunk")
    unit, _, spec = text.partition(" ")
    if unit.lower() != "bytes":
        raise RangeError(f"must count bytes: send {_FORM}")
    span, slash, total_text = spec.strip().partition("/")
    if not slash:
        raise RangeError(f"has no '/SIZE' (the whole file's size): send {_FORM}")
    if span.strip() == "*":
        raise RangeError(f"'bytes */SIZE' names no chunk: send {_FORM}")
    if total_text.strip() == "*":
        raise RangeError(f"must give the whole file's size instead of '*': send {_FORM}")
    first_text, dash, last_text = span.strip().partition("-")
    if not dash:
        raise RangeError(f"must give the chunk's first and last byte: send {_FORM}")
    first = _number(first_text.strip(), "START")
    last = _number(last_text.strip(), "END")
    total = _number(total_text.strip(), "SIZE")
    if last < first:
        raise RangeError(f"ends before it starts: END ({last}) is before START ({first}); "
                         "END is the chunk's last byte, inclusive")
    if last >= total:
        raise RangeError(f"goes past the end of the file: END ({last}) is not below SIZE "
                         f"({total}); the last byte of a {total}-byte file is {total - 1}")
    return ContentRange(first, last + 1, total)


def union(ranges: Iterable[Range]) -> list[Range]:
    """``ranges`` merged: sorted, without overlaps, touching ranges joined."""
    merged: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def received(ranges: Iterable[Range]) -> int:
    """How many distinct bytes ``ranges`` hold together."""
    return sum(end - start for start, end in union(ranges))


def missing(ranges: Iterable[Range], size: int) -> list[Range]:
    """The ranges of ``[0, size)`` that none of ``ranges`` holds, in order."""
    gaps: list[Range] = []
    position = 0
    for start, end in union(ranges):
        if start >= size:
            break
        if start > position:
            gaps.append((position, start))
        position = max(position, end)
    if position < size:
        gaps.append((position, size))
    return gaps


def inclusive(ranges: Iterable[Range]) -> list[list[int]]:
    """``[[first, last], ...]``: ranges as HTTP and the API write them."""
    return [[start, end - 1] for start, end in ranges]


def describe(ranges: Sequence[Range], most: int = 5) -> str:
    """``"bytes 0-9, 20-29 and 2 more ranges"``, for messages."""
    shown = ", ".join(f"{start}-{end - 1}" for start, end in ranges[:most])
    rest = len(ranges) - most
    return f"bytes {shown}" + (f" and {rest} more range{'s' * (rest > 1)}" if rest > 0 else "")


class Incomplete(ValueError):
    """The chunks do not cover the file; ``missing`` says which bytes are absent."""

    def __init__(self, gaps: Sequence[Range]) -> None:
        super().__init__(f"{describe(gaps)} have not been received")
        self.missing = list(gaps)


K = TypeVar("K")


def cover(chunks: Iterable[tuple[K, int, int]], size: int) -> list[tuple[K, int, int]]:
    """The pieces of ``chunks`` that, read in order, give bytes ``[0, size)`` once each.

    Parameters
    ----------
    chunks
        ``(key, start, end)`` per chunk received, in any order, overlapping or not;
        ``end`` is exclusive.
    size
        The file's size in bytes.

    Returns
    -------
    list of (key, offset, length)
        ``length`` bytes of chunk ``key`` from ``offset`` within that chunk. At each
        position the chunk reaching furthest is taken, which gives the fewest pieces;
        ties go to the chunk starting first, then to the one listed first.

    Raises
    ------
    Incomplete
        When some byte of ``[0, size)`` is in no chunk.
    """
    ordered = sorted(((start, -end, index, key) for index, (key, start, end)
                      in enumerate(chunks) if end > start), key=lambda c: c[:3])
    pieces: list[tuple[K, int, int]] = []
    position, i = 0, 0
    while position < size:
        best: tuple[int, int, K] | None = None  # (end, start, key)
        while i < len(ordered) and ordered[i][0] <= position:
            start, negative_end, _, key = ordered[i]
            if best is None or -negative_end > best[0]:
                best = (-negative_end, start, key)
            i += 1
        if best is None or best[0] <= position:
            raise Incomplete(missing(((s, -e) for s, e, _, _ in ordered), size))
        end, start, key = best
        reach = min(end, size)
        pieces.append((key, position - start, reach - position))
        position = reach
    return pieces
