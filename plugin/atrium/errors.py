"""Problem types (RFC 9457) and the exceptions behind them.

Code raises an :class:`ApiError` subclass; the router alone turns it into an
``application/problem+json`` answer. Anything else that escapes a handler becomes
a 500 problem without details (the log has the traceback).

Invalid input names what is wrong: :meth:`BadRequest.invalid` takes
:class:`FieldError` values and answers a ``detail`` sentence naming the first field
plus a machine-readable ``errors`` list, one entry per field, so a client can put
each message next to the right form input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "PROBLEM_SCHEMA", "ApiError", "BadRequest", "Conflict", "FieldError", "Forbidden",
    "MethodNotAllowed", "NotFound", "PayloadTooLarge", "PreconditionRequired", "RefusedDicom",
    "ServiceUnavailable", "Unauthorized",
    "UnsupportedMediaType",
]

PROBLEM_BASE = "https://atrium.dev/problems/"

Location = Literal["path", "query", "header", "body"]


@dataclass(frozen=True)
class FieldError:
    """One rejected input: where it was, which field, and what to send instead.

    ``field`` is a dotted path into the input (``coordinates[2].x``); it is empty
    when the input as a whole is wrong (a body that is not JSON). ``message`` is
    written for the caller and never repeats the rejected value, which may be large
    or carry PHI.
    """

    location: Location
    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"in": self.location, "field": self.field, "message": self.message}

    def sentence(self) -> str:
        where = {"path": "path parameter", "query": "query parameter",
                 "header": "header", "body": "body field"}[self.location]
        if not self.field:
            return f"Invalid {'request body' if self.location == 'body' else where}: " \
                   f"{self.message}"
        return f"Invalid {where} '{self.field}': {self.message}"


class ApiError(Exception):
    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status,
                "detail": self.detail, **self.extra}


class BadRequest(ApiError):
    status, slug, title = 400, "invalid-request", "Invalid request"

    @classmethod
    def invalid(cls, errors: Sequence[FieldError]) -> BadRequest:
        """The problem for one or more rejected fields; ``errors`` must not be empty."""
        if not errors:
            raise ValueError("BadRequest.invalid needs at least one FieldError")
        detail = errors[0].sentence()
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more; see 'errors')"
        return cls(detail, errors=[error.as_json() for error in errors])


class RefusedDicom(BadRequest):
    """A DICOM file Atrium will not let a parser see (:mod:`atrium.dicom.scan`)."""

    slug, title = "refused-dicom", "DICOM file refused"


class Unauthorized(ApiError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(ApiError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ApiError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApiError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, detail: str, allowed: list[str]) -> None:
        super().__init__(detail, allowed=allowed)
        self.allowed = allowed


class Conflict(ApiError):
    status, slug, title = 409, "conflict", "Conflict"


class PreconditionRequired(ApiError):
    """A conditional request was required (RFC 6585 would say 428). Orthanc 1.10's
    HTTP server knows no 428 — a plugin answering it gets its connection dropped —
    so this is a 400 whose problem ``type`` names the missing precondition."""

    status, slug, title = 400, "precondition-required", "Precondition required"


class PayloadTooLarge(ApiError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ApiError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ServiceUnavailable(ApiError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document (application/problem+json).",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Present on 400: one entry per rejected field.",
            "items": {
                "type": "object",
                "required": ["in", "field", "message"],
                "properties": {
                    "in": {"enum": ["path", "query", "header", "body"]},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
        "allowed": {"type": "array", "items": {"type": "string"},
                    "description": "Present on 405: the methods the path accepts."},
    },
}
"""What every problem document answered by the router looks like (OpenAPI's
``Problem`` component)."""
