"""Byte ranges of resumable uploads: Content-Range parsing with precise refusals, and
the arithmetic of received chunks — what is received, what is missing, and a cover
whose concatenation is the file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium.uploads.ranges import (
    ContentRange,
    Incomplete,
    RangeError,
    cover,
    describe,
    inclusive,
    missing,
    parse_content_range,
    received,
    union,
)

# ------------------------------------------------------------------- Content-Range


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes 0-1023/4096", ContentRange(0, 1024, 4096)),
    ("bytes 4095-4095/4096", ContentRange(4095, 4096, 4096)),
    ("Bytes 10-19/20", ContentRange(10, 20, 20)),  # the unit is case-insensitive
    ("  bytes  0-0/1 ", ContentRange(0, 1, 1)),
    ("bytes 0-68719476735/68719476736", ContentRange(0, 64 * 1024 ** 3, 64 * 1024 ** 3)),
])
def test_a_content_range_names_the_chunk_with_an_exclusive_end(header: str,
                                                               expected: ContentRange) -> None:
    parsed = parse_content_range(header)
    assert parsed == expected
    assert parsed.length == expected.end - expected.start
    assert parse_content_range(str(parsed)) == parsed  # its text form is the header's


@pytest.mark.parametrize(("header", "says"), [
    (None, "is required"),
    ("", "is required"),
    ("items 0-9/10", "must count bytes"),
    ("bytes=0-9/10", "must count bytes"),
    ("bytes 0-9", "no '/SIZE'"),
    ("bytes */10", "names no chunk"),
    ("bytes 0-9/*", "instead of '*'"),
    ("bytes 5/10", "first and last byte"),
    ("bytes -9/10", "START must be a whole number"),
    ("bytes 0-/10", "END must be a whole number"),
    ("bytes 0-9/ten", "SIZE must be a whole number"),
    ("bytes -1-9/10", "START must be a whole number"),
    ("bytes 0x0-9/10", "START must be a whole number"),
    ("bytes 0-9/99999999999999999999", "SIZE must be a whole number"),
    ("bytes 9-5/10", "END (5) is before START (9)"),
    ("bytes 0-10/10", "END (10) is not below SIZE (10)"),
    ("bytes 0-0/0", "END (0) is not below SIZE (0)"),
])
def test_a_bad_content_range_is_refused_saying_what_to_send(header: str | None,
                                                            says: str) -> None:
    with pytest.raises(RangeError) as caught:
        parse_content_range(header)
    assert says in caught.value.reason
    assert str(caught.value).startswith("Content-Range ")
    assert "bytes START-END/SIZE" in caught.value.reason or "(" in caught.value.reason


def test_a_refusal_never_echoes_the_header() -> None:
    with pytest.raises(RangeError) as caught:
        parse_content_range("bytes " + "x" * 10_000)
    assert len(str(caught.value)) < 200


@given(st.text(max_size=60))
def test_any_header_parses_to_a_chunk_inside_the_file_or_is_refused(header: str) -> None:
    try:
        chunk = parse_content_range(header)
    except RangeError:
        return
    assert 0 <= chunk.start < chunk.end <= chunk.total


# ---------------------------------------------------------------- received, missing


def test_union_merges_overlapping_and_touching_ranges() -> None:
    assert union([(10, 20), (0, 5), (5, 8), (15, 30), (40, 41), (3, 3)]) == \
        [(0, 8), (10, 30), (40, 41)]
    assert received([(10, 20), (0, 5), (5, 8), (15, 30)]) == 28


def test_missing_ranges_are_the_gaps_in_order() -> None:
    assert missing([], 100) == [(0, 100)]
    assert missing([(0, 100)], 100) == []
    assert missing([(20, 30), (50, 60), (55, 70)], 100) == [(0, 20), (30, 50), (70, 100)]
    assert inclusive(missing([(0, 1024)], 4096)) == [[1024, 4095]]


def test_describe_names_the_first_ranges_and_counts_the_rest() -> None:
    assert describe([(0, 10)]) == "bytes 0-9"
    gaps = [(i * 10, i * 10 + 5) for i in range(8)]
    assert describe(gaps, most=2) == "bytes 0-4, 10-14 and 6 more ranges"


# --------------------------------------------------------------------------- cover


def test_the_cover_takes_the_furthest_reaching_chunk_at_each_position() -> None:
    chunks = [("c", 8, 16), ("a", 0, 6), ("b", 0, 10), ("d", 9, 12), ("e", 14, 20)]
    assert cover(chunks, 20) == [("b", 0, 10), ("c", 2, 6), ("e", 2, 4)]


def test_a_chunk_sent_twice_is_used_once() -> None:
    assert cover([("new", 0, 5), ("old", 0, 5), ("tail", 5, 9)], 9) == \
        [("new", 0, 5), ("tail", 0, 4)]


def test_a_gap_makes_the_cover_incomplete_naming_every_missing_range() -> None:
    with pytest.raises(Incomplete) as caught:
        cover([("a", 0, 4), ("b", 6, 8), ("c", 9, 10)], 12)
    assert caught.value.missing == [(4, 6), (8, 9), (10, 12)]
    assert "bytes 4-5, 8-8, 10-11" in str(caught.value)
    with pytest.raises(Incomplete):
        cover([], 1)


def _file(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


@st.composite
def chunked_files(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """A file and chunks of it that cover it: cut points, each piece possibly widened
    into its neighbours, some sent twice, all shuffled."""
    size = draw(st.integers(min_value=1, max_value=400))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=size - 1), max_size=12))
                  ) if size > 1 else []
    bounds = [0, *cuts, size]
    chunks = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        start -= draw(st.integers(min_value=0, max_value=start))
        end += draw(st.integers(min_value=0, max_value=size - end))
        chunks.append((start, end))
    chunks += draw(st.lists(st.sampled_from(chunks), max_size=4))  # re-sent
    return _file(size), draw(st.permutations(chunks))


@given(chunked_files())
def test_any_covering_chunks_in_any_order_reassemble_the_file(
        case: tuple[bytes, list[tuple[int, int]]]) -> None:
    data, chunks = case
    stored = {index: data[start:end] for index, (start, end) in enumerate(chunks)}
    pieces = cover([(index, start, end) for index, (start, end) in enumerate(chunks)],
                   len(data))
    assert b"".join(stored[key][offset:offset + length] for key, offset, length in pieces) \
        == data
    assert all(length > 0 for _, _, length in pieces)
    assert len(pieces) <= len(set(chunks))
    assert missing(chunks, len(data)) == [] and received(chunks) == len(data)


@given(chunked_files(), st.data())
def test_dropping_a_needed_chunk_reports_exactly_the_bytes_nobody_holds(
        case: tuple[bytes, list[tuple[int, int]]], data: st.DataObject) -> None:
    content, chunks = case
    dropped = data.draw(st.sampled_from(chunks))
    kept = [c for c in chunks if c != dropped]
    holes = [i for i in range(len(content)) if not any(s <= i < e for s, e in kept)]
    expected = [(i, i + 1) for i in holes]
    if not holes:
        assert cover([(n, s, e) for n, (s, e) in enumerate(kept)], len(content))
        return
    with pytest.raises(Incomplete) as caught:
        cover([(n, s, e) for n, (s, e) in enumerate(kept)], len(content))
    assert caught.value.missing == union(expected)
