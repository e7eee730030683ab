"""The decision Orthanc's incoming-request filter asks for, on every HTTP request.

Orthanc calls the filter before it routes a request anywhere — its own REST API,
the DICOMweb plugin, Atrium's routes. The filter can only let a request through
or refuse it (Orthanc then answers 403); it sees the URI, method, client address
and headers, never the answer. So it decides by kind of route:

* Atrium's own routes (``/api/``) and the public DICOMweb root that Atrium serves
  itself: let through — they authenticate, scope and audit each request and can
  answer 401 with a problem document, which the filter cannot.
* The DICOMweb plugin's real root, kept private: only Atrium's own calls, which
  carry the internal secret (:mod:`atrium.auth.internal`).
* OHIF's static files under ``/viewer/`` (:mod:`atrium.api.viewer`): GET without a
  token — they hold no data — and only for paths of plain segments, so no
  spelling of ``..`` reaches Orthanc's own routes that way.
* Everything else is Orthanc's native REST API and its web tools: a valid token
  with the ``orthanc-admin`` permission (role ``admin``), confined like the rest
  of Atrium to the caller's organization (see :func:`orthanc_scope`), and one
  audit row per request, refused or not.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from atrium.auth.audit import record_alone
from atrium.auth.client_address import TrustedProxies
from atrium.auth.guard import AuthGuard, Caller
from atrium.auth.internal import is_internal_call
from atrium.auth.principal import Permission
from atrium.auth.request_audit import audit_event
from atrium.errors import ApiError, Forbidden, NotFound

log = logging.getLogger(__name__)

__all__ = ["OrthancScope", "RequestFilter", "RouteKind", "is_form_post", "is_native_upload",
           "orthanc_scope", "route_kind"]


class RouteKind(enum.Enum):
    ATRIUM_API = "atrium-api"
    DICOMWEB = "dicomweb"  # the public root, served by Atrium's gateway
    DICOMWEB_PLUGIN = "dicomweb-plugin"  # the plugin's private root
    ORTHANC = "orthanc"  # Orthanc's native REST API, Orthanc Explorer, everything else
    VIEWER = "viewer"  # OHIF's files at /viewer/, public (atrium.api.viewer)


# Orthanc's routes whose answers can carry patient data.
_DATA_PREFIXES = ("/patients", "/studies", "/series", "/instances", "/tools", "/wado",
                  "/modalities", "/peers", "/queries", "/jobs", "/archive", "/media")


class OrthancScope(enum.Enum):
    """What an Orthanc route reaches, for confining administrators to their
    organization: the filter cannot change an answer, only refuse a request."""

    SYSTEM = "system"  # no patient data: /system, /statistics, /plugins, /tools/now...
    RESOURCE = "resource"  # one patient, study, series or instance, by its Orthanc id
    EVERYTHING = "everything"  # lists, searches, jobs, peers, uploads, the web UI...


_SYSTEM_ROUTES = ("/system", "/statistics", "/plugins", "/tools/now", "/tools/now-local",
                  "/tools/dicom-conformance", "/tools/generate-uid", "/tools/log-level")
_LEVEL_TABLES = {"patients": "patients", "studies": "studies", "series": "series",
                 "instances": "instances"}
_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_VIEWER_PATH = re.compile(r"^/viewer(/([A-Za-z0-9_-][A-Za-z0-9._-]*)?)*$")

# Every live mirror row behind one Orthanc resource, with its organization. A
# patient resource of Orthanc can hold studies of several organizations (the same
# PatientID); it is reachable only when all are the caller's.
_RESOURCE_ORGANIZATIONS = {
    "patients": "SELECT DISTINCT organization_id FROM patients "
                "WHERE orthanc_id = %s AND deleted_at IS NULL",
    "studies": "SELECT organization_id FROM studies WHERE orthanc_id = %s "
               "AND deleted_at IS NULL",
    "series": "SELECT st.organization_id FROM series se JOIN studies st ON st.id = se.study_id "
              "WHERE se.orthanc_id = %s AND se.deleted_at IS NULL",
    "instances": "SELECT st.organization_id FROM instances i JOIN series se "
                 "ON se.id = i.series_id JOIN studies st ON st.id = se.study_id "
                 "WHERE i.orthanc_id = %s AND i.deleted_at IS NULL",
}


def orthanc_scope(uri: str) -> tuple[OrthancScope, str | None, str | None]:
    """(scope, level, Orthanc id) of a native Orthanc URI."""
    path = uri.split("?", 1)[0].rstrip("/")
    if path in _SYSTEM_ROUTES:
        return OrthancScope.SYSTEM, None, None
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] in _LEVEL_TABLES and _ORTHANC_ID.match(parts[2]):
        return OrthancScope.RESOURCE, parts[1], parts[2]
    return OrthancScope.EVERYTHING, None, None


def route_kind(uri: str, dicomweb_root: str, plugin_root: str) -> RouteKind:
    """The kind of route ``uri`` reaches; roots end with ``/``."""
    if uri.startswith("/api/"):
        return RouteKind.ATRIUM_API
    if _VIEWER_PATH.match(uri.split("?", 1)[0]):
        return RouteKind.VIEWER
    if uri.startswith(plugin_root) or uri == plugin_root.rstrip("/"):
        return RouteKind.DICOMWEB_PLUGIN
    if uri.startswith(dicomweb_root) or uri == dicomweb_root.rstrip("/"):
        return RouteKind.DICOMWEB
    return RouteKind.ORTHANC


def is_native_upload(uri: str, method: str) -> bool:
    """Whether a request is Orthanc's own upload (``POST /instances``), in any of the
    spellings Orthanc routes there (``//instances``, ``/instances/``, ``/%69nstances``...).

    Orthanc 1.10 parses an upload by recursion on its HTTP thread, and one hostile
    file (sequences nested thousands deep) kills the process before any plugin can
    look at it; so only Atrium's own calls, which scan first, may use it."""
    if method != "POST":
        return False
    segments = [s for s in unquote(uri.split("?", 1)[0]).split("/") if s not in ("", ".")]
    return segments == ["instances"]


def is_form_post(headers: Mapping[str, str]) -> bool:
    """Whether a request is an HTML form upload (``multipart/form-data``), which
    Orthanc's HTTP server splits into one request per part when it is a POST."""
    return headers.get("content-type", "").split(";")[0].strip().lower() == \
        "multipart/form-data"


class RequestFilter:
    """``allow(uri, method, ip, headers)``: never raises (an exception in Orthanc's
    filter is a 500); any failure refuses."""

    def __init__(self, guard: AuthGuard, internal_secret: str, connect: Callable[[], Any], *,
                 dicomweb_root: str, plugin_root: str, gateway_enabled: bool,
                 operators: Callable[[], Any] = lambda: None,
                 proxies: TrustedProxies | None = None) -> None:
        """``operators``: the id of the organization whose administrators operate
        Orthanc as a whole (the default organization), or None. ``proxies``: whose
        ``X-Forwarded-For`` names the client that audit rows record."""
        self._guard = guard
        self._proxies = proxies or TrustedProxies()
        self._operators = operators
        self._secret = internal_secret
        self._connect = connect
        self._dicomweb_root = dicomweb_root
        self._plugin_root = plugin_root
        self._gateway_enabled = gateway_enabled

    def client_address(self, ip: str, headers: Mapping[str, str]) -> str:
        """The address of the client behind a connection from ``ip``, as audit rows
        record it (atrium.auth.client_address)."""
        return self._proxies.client(ip, headers)

    def allow(self, uri: str, method: str, ip: str, headers: Mapping[str, str]) -> bool:
        try:
            return self._decide(uri, method, ip, headers)
        except Exception:  # noqa: BLE001 - fail closed, never a 500
            log.exception("filter.failed method=%s", method)
            return False

    def _decide(self, uri: str, method: str, ip: str, headers: Mapping[str, str]) -> bool:
        kind = route_kind(uri, self._dicomweb_root, self._plugin_root)
        if kind is RouteKind.ATRIUM_API and method != "POST":
            return True  # Atrium's routes check the caller themselves
        if is_internal_call(headers, ip, self._secret):
            return True
        if kind is RouteKind.ATRIUM_API:
            if method == "POST" and is_form_post(headers):
                # Orthanc would hand each part of the form to the route as a request
                # of its own and answer 200 itself, whatever the route said: refuse
                # rather than let the upload vanish behind a success.
                log.warning("filter.form_post_refused uri=%s advice=send multipart/form-data "
                            "with 'X-HTTP-Method-Override: PUT'", uri[:200])
                self._audit(None, method, uri, 403, ip, headers, phi=False)
                return False
            return True
        if kind is RouteKind.DICOMWEB and self._gateway_enabled:
            return True
        if kind is RouteKind.VIEWER:
            return method == "GET"
        if kind is RouteKind.DICOMWEB_PLUGIN:
            self._audit(None, method, uri, 403, ip, headers, phi=False)
            return False
        return self._admin_only(uri, method, ip, headers)

    def _admin_only(self, uri: str, method: str, ip: str, headers: Mapping[str, str]) -> bool:
        caller: Caller | None = None
        try:
            caller = self._guard.caller(headers.get("authorization"))
            if not caller.can(Permission.ORTHANC_ADMIN):
                raise Forbidden("Orthanc's own API is for administrators")
            if is_native_upload(uri, method):
                raise Forbidden("Upload through POST /api/instances or STOW-RS, which scan "
                                "each file before Orthanc parses it")
            self._confine(caller, uri)
            status = 200
        except ApiError as error:
            status = error.status
        phi = method == "GET" and uri.startswith(_DATA_PREFIXES)
        self._audit(caller, method, uri, status, ip, headers, phi=phi)
        return status == 200

    def _confine(self, caller: Caller, uri: str) -> None:
        """Raise NotFound unless ``uri`` stays within the caller's organization."""
        scope, level, orthanc_id = orthanc_scope(uri)
        if scope is OrthancScope.SYSTEM or caller.organization_id == self._operators():
            return
        if scope is OrthancScope.EVERYTHING:
            raise NotFound("Orthanc's lists, searches and tools span every organization: "
                           "they are for the default organization's administrators")
        assert level is not None
        with self._connect() as conn:
            owners = {row[0] for row in conn.execute(_RESOURCE_ORGANIZATIONS[level],
                                                     (orthanc_id,)).fetchall()}
        if owners != {caller.organization_id}:
            raise NotFound("No such resource in your organization")

    def _audit(self, caller: Caller | None, method: str, uri: str, status: int, ip: str,
               headers: Mapping[str, str], *, phi: bool) -> None:
        # The path only, cut short: Orthanc's URIs hold ids, never names.
        event = audit_event(action=f"{method} orthanc", caller=caller, status=status,
                            client_ip=self.client_address(ip, headers), headers=headers,
                            resource_type="orthanc", phi=phi, uri=uri[:200])
        with self._connect() as conn:
            record_alone(conn, event)
