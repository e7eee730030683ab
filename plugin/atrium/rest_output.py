"""Atrium's answers written on the ``RestOutput`` Orthanc hands a REST route.

The entry script passes the output object in; nothing here imports ``orthanc``,
so the calls made on each binding of the Python plugin are tested with fakes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from atrium.api.http import Response
from atrium.dicomweb.multipart_stream import MultipartAnswer

log = logging.getLogger(__name__)

__all__ = ["write_answer", "write_multipart"]


def write_answer(output: Any, response: Response | MultipartAnswer) -> None:
    """Sends ``response`` through ``output``; a :class:`MultipartAnswer` part by
    part (:func:`write_multipart`)."""
    if isinstance(response, MultipartAnswer):
        write_multipart(output, response)
        return
    if response.status == 405:
        # Orthanc reserves 405 to this call, which writes the Allow header itself.
        output.SendMethodNotAllowed(response.headers.get("Allow", ""))
        return
    for name, value in response.headers.items():
        output.SetHttpHeader(name, value)
    if response.status == 200:
        output.AnswerBuffer(response.body, response.content_type)
    elif response.status == 304:
        # Not Modified carries no body, so not even a Content-Type.
        output.SendHttpStatusCode(304)
    else:
        _send_status(output, response)


class _Binding:
    """What this process's ``SendHttpStatus`` takes, learned from its first call."""

    text_only = False


def _utf8_text(body: bytes) -> str | None:
    """``body`` as a str whose UTF-8 encoding is ``body`` itself, or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _send_status(output: Any, response: Response) -> None:
    """A status other than 200 with its body, byte for byte where the binding can.

    Later orthanc-python releases take ``(status, bytes)``: any body goes out as it
    is. 4.0 (Debian bookworm) takes ``(status, str, size)`` and sends the string's
    UTF-8 encoding: a UTF-8 body without NUL still goes out byte for byte, a binary
    one cannot go out at all. It is then replaced by a problem document that says
    so, with the same status, never by a mangled copy. (The binding is learned from
    the first refused call; should that first answer be binary, it goes out with
    its status and headers and an empty body.)"""
    text = _utf8_text(response.body)
    if _Binding.text_only and text is None:
        log.warning("output.binary_error_body_dropped status=%d content_type=%s bytes=%d "
                    "advice=a later orthanc-python relays it unchanged",
                    response.status, response.content_type, len(response.body))
        text = json.dumps({
            "title": "The answer's body could not be relayed",
            "status": response.status,
            "detail": f"The answer was {response.status} with a binary body "
                      f"({response.content_type}, {len(response.body)} bytes), which this "
                      "server's Orthanc Python plugin can only send as text.",
        })
        output.SetHttpHeader("Content-Type", "application/problem+json")
    elif response.content_type:
        output.SetHttpHeader("Content-Type", response.content_type)
    if not _Binding.text_only:
        try:
            output.SendHttpStatus(response.status, response.body)
            return
        except TypeError:  # orthanc-python 4.0: the call wants a str and its size
            _Binding.text_only = True
    text = text or ""
    output.SendHttpStatus(response.status, text, len(text.encode()))


def write_multipart(output: Any, answer: MultipartAnswer) -> None:
    """``StartMultipartAnswer`` then one ``SendMultipartItem`` per part, as the
    parts arrive; the source is closed in any case.

    Orthanc allows no header but ``Set-Cookie`` on a multipart answer, and only
    status 200. A failure once the answer has started (the source broke, the
    client went away) is raised: Orthanc then drops the connection without the
    closing delimiter, so the client cannot take a cut answer for a whole one."""
    try:
        output.StartMultipartAnswer(answer.subtype, answer.content_type)
        for body in answer.parts:
            output.SendMultipartItem(body)
    finally:
        answer.close()
