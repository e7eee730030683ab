"""``multipart/form-data`` bodies (RFC 7578): the fields of an HTML form and its files.

The body is already in memory (Orthanc hands a plugin the whole request), so a
file part is returned as a :class:`memoryview` of it, never copied: a slide of
hundreds of megabytes is not held twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atrium.errors import BadRequest

__all__ = ["FormPart", "parse_form_data"]

MAX_PARTS = 64
MAX_FIELD_BYTES = 256 * 1024  # a text field; files have no limit of their own here
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r';\s*([a-zA-Z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None  # None for a plain field
    content_type: str
    data: memoryview

    def text(self) -> str:
        if len(self.data) > MAX_FIELD_BYTES:
            raise BadRequest(f"The form field {self.name!r} is longer than "
                             f"{MAX_FIELD_BYTES // 1024} KiB.")
        try:
            return bytes(self.data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The form field {self.name!r} is not UTF-8 text.") from None


def _boundary(content_type: str) -> bytes:
    match = _BOUNDARY.search(content_type)
    if not match:
        raise BadRequest("A multipart/form-data body needs a boundary in its Content-Type.")
    return (match.group(1) or match.group(2)).encode("ascii", "replace")


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest("A part of the multipart/form-data body has a malformed header.")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
    return headers


def _disposition(value: str) -> tuple[str, str | None]:
    kind, _, rest = value.partition(";")
    if kind.strip().lower() != "form-data":
        raise BadRequest("Every part of a multipart/form-data body needs "
                         "'Content-Disposition: form-data; name=...'.")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _DISPOSITION_PARAM.finditer(";" + rest)}
    name = params.get("name")
    if not name:
        raise BadRequest("A part of the multipart/form-data body has no name.")
    # Browsers send a file name as it is (only '"' and line breaks percent-encoded),
    # so a backslash is part of the name, never an escape: "C:\\x\\a.svs" stays one.
    return name, params.get("filename")


def parse_form_data(body: bytes, content_type: str) -> list[FormPart]:
    """The parts of ``body``, in order.

    Raises
    ------
    BadRequest
        No boundary, no closing delimiter, a part without a name, more than
        :data:`MAX_PARTS` parts.
    """
    delimiter = b"--" + _boundary(content_type)
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise BadRequest("The multipart/form-data body does not contain its boundary.")
    parts: list[FormPart] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # the closing delimiter
        if not body.startswith(b"\r\n", position):
            raise BadRequest("The multipart/form-data body is malformed after a boundary.")
        header_end = body.find(b"\r\n\r\n", position + 2)
        if header_end < 0:
            raise BadRequest("A part of the multipart/form-data body has no end of headers.")
        headers = _headers(body[position + 2:header_end]) if header_end > position + 2 else {}
        next_delimiter = body.find(b"\r\n" + delimiter, header_end + 4)
        if next_delimiter < 0:
            raise BadRequest("The multipart/form-data body is cut short: no closing "
                             "boundary. Was the upload interrupted?")
        if len(parts) == MAX_PARTS:
            raise BadRequest(f"A form may have at most {MAX_PARTS} parts.")
        name, filename = _disposition(headers.get("content-disposition", ""))
        parts.append(FormPart(name, filename,
                              headers.get("content-type", "text/plain").lower(),
                              view[header_end + 4:next_delimiter]))
        position = next_delimiter + 2 + len(delimiter)
