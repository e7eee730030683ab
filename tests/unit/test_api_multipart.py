"""multipart/form-data parsing: fields, files as views of the body, and every
malformed body a 400 problem."""

from __future__ import annotations

import pytest

from atrium.api.multipart import MAX_PARTS, parse_form_data
from atrium.errors import BadRequest

BOUNDARY = "----atrium-test-7d93"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                + ("Content-Type: application/octet-stream\r\n" if filename else "")
                + "\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_fields_and_a_file_come_back_in_order() -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    body = form(("slide_id", None, "S-1 é".encode()), ("file", "case 12.svs", payload),
                ("stain", None, b"H&E"))
    parts = parse_form_data(body, CONTENT_TYPE)
    assert [(p.name, p.filename) for p in parts] == [
        ("slide_id", None), ("file", "case 12.svs"), ("stain", None)]
    assert parts[0].text() == "S-1 é"
    assert bytes(parts[1].data) == payload
    assert parts[1].content_type == "application/octet-stream"
    assert isinstance(parts[1].data, memoryview)  # a view of the body, not a copy
    assert parts[1].data.obj is body


def test_a_quoted_boundary_and_an_empty_field() -> None:
    body = form(("empty", None, b""), boundary="a b")
    parts = parse_form_data(body, 'multipart/form-data; boundary="a b"')
    assert parts[0].text() == ""


@pytest.mark.parametrize("body, content_type, message", [
    (b"whatever", "multipart/form-data", "boundary"),
    (b"no delimiter at all", CONTENT_TYPE, "does not contain"),
    (form(("file", "a", b"x" * 100))[:-40], CONTENT_TYPE, "cut short"),
    (f"--{BOUNDARY}\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--{BOUNDARY}--"
     .encode(), CONTENT_TYPE, "form-data"),
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
     CONTENT_TYPE, "no name"),
    (f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(), CONTENT_TYPE,
     "malformed header"),
    (f"--{BOUNDARY}garbage".encode(), CONTENT_TYPE, "malformed"),
])
def test_malformed_bodies_are_400(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_form_data(body, content_type)


def test_too_many_parts() -> None:
    body = form(*[(f"f{i}", None, b"x") for i in range(MAX_PARTS + 1)])
    with pytest.raises(BadRequest, match="at most"):
        parse_form_data(body, CONTENT_TYPE)


def test_a_field_that_is_not_utf8_is_400() -> None:
    part = parse_form_data(form(("stain", None, b"\xff\xfe")), CONTENT_TYPE)[0]
    with pytest.raises(BadRequest, match="UTF-8"):
        part.text()


def test_a_backslash_in_a_file_name_is_kept_not_unescaped() -> None:
    body = form(("file", "C:\\slides\\a.svs", b"x"))
    assert parse_form_data(body, CONTENT_TYPE)[0].filename == "C:\\slides\\a.svs"
