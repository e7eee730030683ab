"""Problem types (RFC 9457) and the exceptions behind them.

Code raises an :class:`ApiError` subclass; the router alone turns it into an
``application/problem+json`` answer. Anything else that escapes a handler becomes
a 500 problem without details (the log has the traceback).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError", "BadRequest", "Conflict", "Forbidden", "MethodNotAllowed", "NotFound",
    "PayloadTooLarge", "ServiceUnavailable", "Unauthorized", "UnsupportedMediaType",
]

PROBLEM_BASE = "https://atrium.dev/problems/"


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


class PayloadTooLarge(ApiError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ApiError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ServiceUnavailable(ApiError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"
