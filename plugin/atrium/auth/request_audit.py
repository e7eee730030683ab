"""One audit row for every request to a non-public route, written before the
answer leaves.

The router answers; this wraps it. The row names the caller (when the token was
valid), the route, the resource, the status and whether the answer carries PHI
(the handler says so in :class:`~atrium.api.http.AuditNote`). A refused attempt
(401, 403, 404) is a row like any other. When the row cannot be written, an answer
carrying PHI is withheld (503): no PHI leaves without its record.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from atrium.api.http import REQUEST_TIMINGS, Request, Response, Router, problem_response
from atrium.auth.audit import AuditEvent, record_alone
from atrium.auth.guard import Caller, current_caller
from atrium.db import unreachable
from atrium.errors import ServiceUnavailable

log = logging.getLogger(__name__)

__all__ = ["AuditedApi", "CoalescedAudit", "audit_event", "recorded_or_withheld"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _address(ip: str) -> str | None:
    """The client's address as the audit column takes it, or None when Orthanc gave
    something that is not one (an IPv6 zone, say)."""
    try:
        return str(ipaddress.ip_address(ip.split("%")[0])) if ip else None
    except ValueError:
        return None


def _uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _resource(resource_type: str | None, resource_id: Any
              ) -> tuple[str | None, uuid.UUID | None]:
    """The resource columns of an audit row, as stored."""
    return (resource_type[:100] if resource_type else None,
            _uuid(resource_id) if resource_id is not None else None)


def audit_event(*, action: str, caller: Caller | None, status: int, client_ip: str,
                headers: Mapping[str, str], resource_type: str | None = None,
                resource_id: Any = None, phi: bool = False, **details: Any) -> AuditEvent:
    """The audit row of one HTTP request, from whichever route kind served it."""
    resource_type, resource_id = _resource(resource_type, resource_id)
    return AuditEvent(
        action=action[:100],
        user_id=caller.user_id if caller else None,
        keycloak_id=caller.principal.keycloak_id[:255] if caller else None,
        organization_id=caller.organization_id if caller else None,
        resource_type=resource_type,
        resource_id=resource_id,
        ip_address=_address(client_ip),
        user_agent=headers.get("user-agent", "")[:1000] or None,
        details={"status": status, **details},
        phi_accessed=phi and status < 400,
    )


def _written(connect: Callable[[], Any], event: AuditEvent) -> bool:
    try:
        with connect() as conn:
            record_alone(conn, event)
    except Exception as error:  # noqa: BLE001 - the caller decides what the failure means
        if unreachable(error):  # an outage, not a bug: one line, no traceback
            log.error("audit.unwritten action=%s status=%s error=%s", event.action,
                      event.details.get("status"), type(error).__name__)
        else:
            log.exception("audit.unwritten action=%s status=%s", event.action,
                          event.details.get("status"))
        return False
    return True


def _withheld_unless_recorded(written: bool, event: AuditEvent, response: Response
                              ) -> Response:
    if not written and event.phi_accessed:
        return problem_response(ServiceUnavailable(
            "The access could not be recorded in the audit log, so the answer is "
            "withheld; try again shortly."))
    return response


def recorded_or_withheld(connect: Callable[[], Any], event: AuditEvent, response: Response
                         ) -> Response:
    """``response`` once ``event`` is committed. When the row cannot be written, an
    answer carrying PHI is replaced by a 503; any other answer goes out (its write,
    if any, has happened) and the failure is logged."""
    return _withheld_unless_recorded(_written(connect, event), event, response)


COALESCE_SECONDS = 300.0
"""The audit window of a coalesced route (slide tiles, Deep Zoom, thumbnails)."""


@dataclass
class _Window:
    opened: float
    done: threading.Event = field(default_factory=threading.Event)
    written: bool = False


class CoalescedAudit:
    """One audit row per caller and resource per window, for routes a viewer calls
    hundreds of times a minute (a slide's tiles).

    The first successful answer of a window waits for its row to be committed, as
    any audited answer does; answers of the same window that arrive while it is
    being written wait for it too, so none leaves before the window's record. If the
    write fails, the window is not opened: the next request writes again. Windows
    are per process — with several nodes, each node records its own.
    """

    def __init__(self, connect: Callable[[], Any], seconds: float = COALESCE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, capacity: int = 100_000) -> None:
        self._connect = connect
        self._seconds = seconds
        self._clock = clock
        self._capacity = capacity
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._lock = threading.Lock()

    def _open_or_join(self, key: tuple[Any, ...]) -> tuple[_Window, bool]:
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.opened < self._seconds:
                return window, False
            if len(self._windows) >= self._capacity:
                self._windows = {k: w for k, w in self._windows.items()
                                 if now - w.opened < self._seconds}
            window = self._windows[key] = _Window(now)
            return window, True

    def answer(self, key: tuple[Any, ...], make_event: Callable[[], AuditEvent],
               response: Response) -> Response:
        """``response`` once its window's row is committed; ``make_event`` is called
        only when a row is to be written (most answers of a window write none)."""
        window, opener = self._open_or_join(key)
        if not opener:
            if window.done.wait(timeout=30) and window.written:
                return response
            return recorded_or_withheld(self._connect, make_event(), response)
        event = make_event()
        written = _written(self._connect, replace(event, details={
            **event.details, "coalesced_seconds": self._seconds}))
        window.written = written
        if not written:
            with self._lock:
                if self._windows.get(key) is window:
                    del self._windows[key]
        window.done.set()
        return _withheld_unless_recorded(written, event, response)


RequestObserver = Callable[[str, str | None, int, float, bool], None]
"""Told of each answered request: method, route template (None when no route
matched), status, seconds, and whether a PHI answer was withheld
(:meth:`atrium.metrics.Metrics.observe_request`)."""


class AuditedApi:
    """Atrium's API: the router, with every non-public request on record."""

    def __init__(self, router: Router, connect: Callable[[], Any],
                 observe: RequestObserver | None = None) -> None:
        self.router = router
        self._connect = connect
        self.coalesced = CoalescedAudit(connect)
        self._observe = observe

    def handle(self, request: Request) -> Response:
        """The router's answer once its audit row is written, with a
        ``Server-Timing`` header: milliseconds spent on the token and caller
        (``auth``), the route's own work (``app``) and the audit row (``audit``)."""
        spent: dict[str, float] = {}
        REQUEST_TIMINGS.set(spent)
        began = time.perf_counter()
        response, route, withheld = self._audited(request)
        elapsed = time.perf_counter() - began
        spent["app"] = elapsed - spent.get("auth", 0.0) - spent.get("audit", 0.0)
        if self._observe is not None:
            self._observe(request.method, route.path.template if route else None,
                          response.status, elapsed, withheld)
        timing = ", ".join(f"{part};dur={seconds * 1000:.2f}" for part, seconds in spent.items())
        return replace(response, headers={**response.headers, "Server-Timing": timing})

    def _audited(self, request: Request) -> tuple[Response, Any, bool]:
        """The answer, the route that matched (or None) and whether the answer was
        withheld for want of its audit row."""
        current_caller.set(None)
        response, route, params = self.router.answer(request)
        if route is not None and route.is_public:
            return response, route, False
        began = time.perf_counter()
        try:
            recorded = self._recorded(request, response, route, params)
            return recorded, route, recorded is not response
        finally:
            spent = REQUEST_TIMINGS.get()
            if spent is not None:
                spent["audit"] = time.perf_counter() - began

    def _recorded(self, request: Request, response: Response, route: Any,
                  params: Mapping[str, Any]) -> Response:
        note = response.audit
        caller = current_caller.get()
        resource_type = (note.resource_type if note and note.resource_type
                         else route.tags[0] if route and route.tags else None)
        resource_id = note.resource_id if note and note.resource_id else params.get("id")

        def event() -> AuditEvent:
            return audit_event(
                action=f"{request.method} {route.path.template if route else request.path[:80]}",
                caller=caller, status=response.status, client_ip=request.client_ip,
                headers=request.headers, resource_type=resource_type, resource_id=resource_id,
                phi=bool(note and note.phi), write=request.method in WRITE_METHODS)

        if route is not None and route.coalesce_audit and response.status < 400 and caller:
            key = (caller.user_id, caller.principal.keycloak_id,
                   *_resource(resource_type, resource_id))
            return self.coalesced.answer(key, event, response)
        return recorded_or_withheld(self._connect, event(), response)
