"""``multipart/related`` answers read and relayed part by part (RFC 2046 §5.1).

A WADO-RS retrieval of a study is one multipart answer holding every instance.
The gateway reads the plugin's answer as a stream of chunks and hands each part on
as soon as its closing delimiter has arrived, so it holds one part (one instance)
plus one chunk at a time, never the whole answer. Pure: no Orthanc, no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message

__all__ = ["MalformedMultipart", "MultipartAnswer", "Part", "iter_parts", "multipart_type"]

MAX_HEADER_BYTES = 16 * 1024
"""The most a part's header block (and the delimiter line before it) may take."""

_CRLF = b"\r\n"


class MalformedMultipart(ValueError):
    """The stream is not the multipart body its ``Content-Type`` announced."""


@dataclass(frozen=True)
class Part:
    """One part. ``body`` is a view into the reader's buffer: valid until the next
    part is asked for (it is released then), so copy it (``bytes(part.body)``) to
    keep it."""

    headers: Mapping[str, str]  # names in lower case
    body: memoryview


@dataclass(frozen=True)
class MultipartAnswer:
    """A 200 answer sent part by part: ``multipart/<subtype>; type=<content_type>``.

    ``parts`` yields each part's body (bytes-like) as it arrives; ``close`` releases
    the source and must be called whether or not ``parts`` was read to its end."""

    subtype: str
    content_type: str
    parts: Iterator[memoryview]
    close: Callable[[], None]
    status: int = 200


def multipart_type(content_type: str) -> tuple[str, str, bytes] | None:
    """``(subtype, type, boundary)`` of a ``multipart/...`` ``Content-Type`` with a
    boundary, e.g. ``("related", "application/dicom", b"8f…")``; None for anything
    else. ``type`` is ``""`` when the header has none."""
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if message.get_content_maintype() != "multipart" or not isinstance(boundary, str) \
            or not boundary or len(boundary) > 70:
        return None
    kind = message.get_param("type")
    return message.get_content_subtype(), kind if isinstance(kind, str) else "", \
        boundary.encode("ascii", "replace")


class _Buffer:
    """The unread bytes of a chunk stream."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.data = bytearray(_CRLF)  # the first delimiter then looks like every other

    def _fill(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self.data += chunk
                return True
        return False

    def find(self, needle: bytes, what: str, start: int = 0, limit: int | None = None,
             discard: bool = False) -> int:
        """The index of ``needle`` in the buffer at or after ``start``, reading more
        chunks as needed. ``limit`` bounds how far the search may go; ``discard``
        drops what is searched past (a preamble), keeping only what may begin a
        match."""
        while True:
            found = self.data.find(needle, start)
            if found >= 0:
                return found
            if limit is not None and len(self.data) > limit:
                raise MalformedMultipart(f"{what} is longer than {limit} bytes")
            start = max(start, len(self.data) - len(needle) + 1)
            if discard and start > 0:
                del self.data[:start]
                start = 0
            if not self._fill():
                raise MalformedMultipart(f"the stream ended inside {what}")

    def ensure(self, size: int) -> bool:
        while len(self.data) < size:
            if not self._fill():
                return False
        return True


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(_CRLF) if block else []:
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MalformedMultipart("a part has a malformed header line")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def iter_parts(chunks: Iterable[bytes], boundary: bytes,
               max_header_bytes: int = MAX_HEADER_BYTES) -> Iterator[Part]:
    """The parts of a multipart body arriving as ``chunks``, each yielded once its
    closing delimiter has been read.

    Memory: the part being read plus one chunk (and a header block of at most
    ``max_header_bytes``). The preamble is discarded as it is read and the epilogue
    is not read at all. Raises :class:`MalformedMultipart` when the stream ends
    before the closing delimiter or a header block is malformed or too long.
    """
    delimiter = _CRLF + b"--" + boundary
    buffer = _Buffer(chunks)
    start = buffer.find(delimiter, "the preamble", discard=True)
    del buffer.data[:start + len(delimiter)]
    while True:
        if not buffer.ensure(2):
            raise MalformedMultipart("the stream ended after a delimiter")
        if buffer.data.startswith(b"--"):
            return
        # The rest of the delimiter line (transport padding), then the headers.
        line_end = buffer.find(_CRLF, "a delimiter line", limit=max_header_bytes)
        if buffer.data[:line_end].strip(b" \t"):
            raise MalformedMultipart("a delimiter is followed by something else")
        headers_end = buffer.find(_CRLF * 2, "a part's headers", start=line_end,
                                  limit=max_header_bytes)
        headers = _headers(bytes(buffer.data[line_end + 2:headers_end]))
        del buffer.data[:headers_end + 4]
        end = buffer.find(delimiter, "a part")
        body = memoryview(buffer.data)[:end]
        try:
            yield Part(headers, body)
        finally:
            body.release()
        del buffer.data[:end + len(delimiter)]
