"""Multipart answers read part by part, and Atrium's answers written on the
``RestOutput`` of each orthanc-python binding (fakes of the two signatures)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium import rest_output
from atrium.api.http import Response
from atrium.dicomweb.gateway import _is_retrieval
from atrium.dicomweb.multipart_stream import (
    MalformedMultipart,
    MultipartAnswer,
    iter_parts,
    multipart_type,
)

BOUNDARY = b"6f1c3c0e-2b8e-4f4a-9d55-0c1d2e3f4a5b"


def orthanc_multipart(bodies: list[bytes], boundary: bytes = BOUNDARY,
                      preamble: bytes = b"") -> bytes:
    """A body as Orthanc's ``SendMultipartItem`` writes it."""
    out = [preamble]
    for body in bodies:
        out.append(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n"
                   + f"Content-Length: {len(body)}\r\n".encode() + b"MIME-Version: 1.0\r\n\r\n"
                   + body + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def in_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def read_all(chunks: Iterator[bytes], boundary: bytes = BOUNDARY) -> list[bytes]:
    return [bytes(part.body) for part in iter_parts(chunks, boundary)]


# Bodies that look like the delimiter, or end with part of it.
TRICKY = [b"", b"\r\n", b"--" + BOUNDARY[:-1], b"\r\n--" + BOUNDARY[:10], b"\x00\xff" * 300,
          b"plain", b"--" + BOUNDARY + b"x"[:0] + b"-", b"\r\n\r\n"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 41, 64 * 1024])
def test_parts_come_out_whole_however_the_stream_is_cut(chunk: int) -> None:
    body = orthanc_multipart(TRICKY, preamble=b"ignored preamble\r\n")
    assert read_all(in_chunks(body, chunk)) == TRICKY


@given(st.lists(st.binary(max_size=200), max_size=6), st.integers(1, 64))
def test_any_bodies_round_trip(bodies: list[bytes], chunk: int) -> None:
    assert read_all(in_chunks(orthanc_multipart(bodies), chunk)) == bodies


def test_part_headers_are_read_and_a_part_may_have_none() -> None:
    raw = (b"--" + BOUNDARY + b"  \r\nContent-Type: application/dicom\r\nX-Extra: a:b\r\n\r\n"
           b"one\r\n--" + BOUNDARY + b"\r\n\r\ntwo\r\n--" + BOUNDARY + b"--")
    parts = [(dict(p.headers), bytes(p.body)) for p in iter_parts([raw], BOUNDARY)]
    assert parts == [({"content-type": "application/dicom", "x-extra": "a:b"}, b"one"),
                     ({}, b"two")]


def test_each_part_is_handed_on_before_the_next_one_is_read() -> None:
    """What bounds memory: part n arrives before part n+1's bytes are pulled."""
    bodies = [bytes([n]) * 10_000 for n in range(5)]
    pulled: list[int] = []

    def source() -> Iterator[bytes]:
        for n, chunk in enumerate(in_chunks(orthanc_multipart(bodies), 4096)):
            pulled.append(n)
            yield chunk

    total = 0
    for n, part in enumerate(iter_parts(source(), BOUNDARY)):
        assert bytes(part.body) == bodies[n]
        # Read so far: this part, plus at most the chunk its delimiter came in.
        assert len(pulled) * 4096 - total < len(part.body) + 2 * 4096 + 200
        total += len(part.body) + 200
    assert len(pulled) == -(-len(orthanc_multipart(bodies)) // 4096)


def test_a_part_is_a_view_released_when_the_next_is_asked_for() -> None:
    parts = iter_parts([orthanc_multipart([b"first", b"second"])], BOUNDARY)
    first = next(parts)
    assert bytes(first.body) == b"first"
    assert bytes(next(parts).body) == b"second"
    with pytest.raises(ValueError, match="released"):
        bytes(first.body)


@pytest.mark.parametrize("raw", [
    orthanc_multipart([b"abc"])[:-12],  # cut inside the closing delimiter
    orthanc_multipart([b"abc"])[:60],  # cut inside a part's headers
    b"no delimiter anywhere",
    b"--" + BOUNDARY + b"\r\nno colon\r\n\r\nbody\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"junk\r\n\r\nbody\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"\r\nX: " + b"y" * 20_000 + b"\r\n\r\nbody\r\n--" + BOUNDARY + b"--",
])
def test_a_broken_or_truncated_stream_is_an_error_not_a_shorter_answer(raw: bytes) -> None:
    with pytest.raises(MalformedMultipart):
        read_all(in_chunks(raw, 1000))


def test_multipart_content_types() -> None:
    assert multipart_type(
        "multipart/related; type=application/dicom; boundary=" + BOUNDARY.decode()) == (
        "related", "application/dicom", BOUNDARY)
    assert multipart_type('multipart/related; type="application/dicom"; boundary="a b"') == (
        "related", "application/dicom", b"a b")
    assert multipart_type("multipart/related; boundary=x") == ("related", "", b"x")
    assert multipart_type("multipart/related") is None
    assert multipart_type("application/dicom+json") is None
    assert multipart_type("") is None


@pytest.mark.parametrize(("path", "streamed"), [
    ("/studies/1.2", True),
    ("/studies/1.2/series/1.3", True),
    ("/studies/1.2/series/1.3/instances/1.4", True),
    ("/studies/1.2/metadata", False),
    ("/studies/1.2/series", False),
    ("/studies/1.2/series/1.3/instances/1.4/frames/1", False),
    ("/studies/1.2/series/1.3/rendered", False),
    ("/studies/1.2/series/1.3/instances/1.4/bulk/7FE00010", False),
    ("/studies/1.2/instances/1.4", False),
])
def test_only_retrievals_of_whole_instances_are_streamed(path: str, streamed: bool) -> None:
    assert _is_retrieval([p for p in path.split("/") if p]) is streamed


# ------------------------------------------------------------------ RestOutput


class Output40:
    """orthanc-python 4.0: ``SendHttpStatus(status, str, size)`` ("Hsk")."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def SetHttpHeader(self, name: str, value: str) -> None:  # noqa: N802
        self.calls.append(("header", name, value))

    def SendHttpStatus(self, *args: Any) -> None:  # noqa: N802
        if len(args) != 3 or not isinstance(args[1], str):
            raise TypeError("Bad types for the arguments (3 arguments expected)")
        status, text, size = args
        self.calls.append(("status", status, text.encode()[:size]))

    def StartMultipartAnswer(self, subtype: str, content_type: str) -> None:  # noqa: N802
        self.calls.append(("start", subtype, content_type))

    def SendMultipartItem(self, item: Any) -> None:  # noqa: N802
        self.calls.append(("item", bytes(item)))


class OutputLater(Output40):
    """Later releases: ``SendHttpStatus(status, bytes)``."""

    def SendHttpStatus(self, *args: Any) -> None:  # noqa: N802
        if len(args) != 2 or not isinstance(args[1], bytes):
            raise TypeError("Bad types for the arguments (2 arguments expected)")
        self.calls.append(("status", args[0], args[1]))


BINARY = b"\xff\xfe\x00\x01DICM\x80error"


@pytest.fixture(autouse=True)
def fresh_binding() -> Iterator[None]:
    rest_output._Binding.text_only = False
    yield
    rest_output._Binding.text_only = False


def test_a_binary_error_body_goes_out_byte_for_byte_where_the_binding_takes_bytes() -> None:
    output = OutputLater()
    rest_output.write_answer(output, Response(400, BINARY, "application/dicom"))
    assert output.calls == [("header", "Content-Type", "application/dicom"),
                            ("status", 400, BINARY)]


@pytest.mark.parametrize("output", [Output40(), OutputLater()])
def test_a_text_error_body_goes_out_byte_for_byte_on_every_binding(output: Output40) -> None:
    body = '{"Message": "Ünknown resource – naïve"}'.encode()
    rest_output.write_answer(output, Response(404, body, "application/json"))
    assert output.calls[-1] == ("status", 404, body)
    assert ("header", "Content-Type", "application/json") in output.calls


def test_on_4_0_a_binary_error_body_is_replaced_by_a_problem_never_mangled() -> None:
    output = Output40()
    rest_output.write_answer(output, Response(404, b"{}", "application/json"))  # learns
    output.calls.clear()
    rest_output.write_answer(output, Response(400, BINARY, "application/dicom"))
    (header, status) = output.calls
    assert header == ("header", "Content-Type", "application/problem+json")
    assert status[:2] == ("status", 400)
    problem = json.loads(status[2])
    assert problem["status"] == 400 and "binary" in problem["detail"]


def test_a_multipart_answer_is_sent_part_by_part_and_closed() -> None:
    closed: list[bool] = []
    answer = MultipartAnswer("related", "application/dicom",
                             iter([memoryview(b"one"), memoryview(b"two")]),
                             lambda: closed.append(True))
    output = Output40()
    rest_output.write_answer(output, answer)
    assert output.calls == [("start", "related", "application/dicom"), ("item", b"one"),
                            ("item", b"two")]
    assert closed == [True]


def test_a_stream_that_breaks_raises_and_is_still_closed() -> None:
    closed: list[bool] = []

    def parts() -> Iterator[memoryview]:
        yield memoryview(b"one")
        raise MalformedMultipart("cut")

    output = Output40()
    with pytest.raises(MalformedMultipart):
        rest_output.write_answer(output, MultipartAnswer(
            "related", "application/dicom", parts(), lambda: closed.append(True)))
    assert output.calls[-1] == ("item", b"one") and closed == [True]
