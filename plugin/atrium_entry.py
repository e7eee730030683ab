"""The script Orthanc's Python plugin loads (``PythonScript``). The only module that
imports ``orthanc``: it adapts Orthanc's callbacks to plain calls into Atrium.

Callbacks come in two kinds. *Notifications* (``OnChange``) only observe: they hand
work to Atrium's mirror worker and can neither block nor raise into Orthanc.
*Interventions* (REST routes) decide an answer.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import site
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

_HERE = Path(__file__).resolve().parent


def _use_venv() -> None:
    """Put Atrium's venv (``ATRIUM_VENV``, default ``<repo>/.venv``) at the front of
    ``sys.path``: Orthanc embeds the system interpreter, not the venv's, and Debian's
    dist-packages (an older cffi, say) must not shadow the venv's packages."""
    venv = Path(os.environ.get("ATRIUM_VENV") or _HERE.parent / ".venv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    if site_packages.is_dir():
        before = list(sys.path)
        site.addsitedir(str(site_packages))  # also runs the editable install's .pth
        added = [entry for entry in sys.path if entry not in before]
        sys.path[:] = added + before
    # The package beside this script first, whatever the venv's editable install
    # names: Orthanc's plugin has already appended this directory, behind the
    # venv's entries, so a checkout sharing another's venv ran that one's Atrium.
    if str(_HERE) in sys.path:
        sys.path.remove(str(_HERE))
    sys.path.insert(0, str(_HERE))


_use_venv()

import orthanc  # noqa: E402

from atrium.api.http import Request, Response  # noqa: E402
from atrium.app import Atrium  # noqa: E402
from atrium.callback_refs import leaky_version, releasing  # noqa: E402
from atrium.orthanc_api import SdkOrthancApi  # noqa: E402
from atrium.rest_output import write_answer as _answer  # noqa: E402
from atrium.settings import PUBLIC_DICOMWEB_ROOT, SettingsError, load_settings  # noqa: E402
from atrium.thread_state import keep_python_state  # noqa: E402


class _OrthancLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.name}: {self.format(record)}"
        if record.levelno >= logging.ERROR:
            orthanc.LogError(message)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(message)
        else:
            orthanc.LogInfo(message)


logging.basicConfig(level=logging.INFO, handlers=[_OrthancLogHandler()], force=True)

try:
    _settings = load_settings(json.loads(orthanc.GetConfiguration()))
except SettingsError as _error:
    orthanc.LogError(f"atrium: configuration error: {_error}")
    raise SystemExit(f"atrium: configuration error: {_error}") from None

_app = Atrium.build(_settings, SdkOrthancApi(orthanc))

_LEVELS = {
    orthanc.ResourceType.PATIENT: "Patient",
    orthanc.ResourceType.STUDY: "Study",
    orthanc.ResourceType.SERIES: "Series",
    orthanc.ResourceType.INSTANCE: "Instance",
}


def _on_deleted(level: object, resource_id: str) -> None:
    name = _LEVELS.get(level)  # type: ignore[call-overload]
    if name:
        _app.worker.notify_deleted(name, resource_id)


def _on_started(level: object, resource_id: str) -> None:
    _app.start()
    # What is loaded by now (modules, the codecs, the application) lives as long as
    # Orthanc: out of the collector's sight, a full collection no longer walks it. In
    # Orthanc a full collection took 110-120 ms with the GIL held, a pause for every
    # request in flight; 18-38 ms after this (bench/signals.py, a gc callback).
    gc.freeze()


_ON_CHANGE = {
    orthanc.ChangeType.ORTHANC_STARTED: _on_started,
    orthanc.ChangeType.ORTHANC_STOPPED: lambda level, rid: _app.stop(),
    orthanc.ChangeType.NEW_INSTANCE: lambda level, rid: _app.worker.notify_new(),
    orthanc.ChangeType.DELETED: _on_deleted,
}


def on_change(change_type: object, level: object, resource_id: str) -> None:
    """Notification: must stay cheap and must never raise into Orthanc."""
    handler = _ON_CHANGE.get(change_type)  # type: ignore[call-overload]
    if handler is None:
        return
    try:
        handler(level, resource_id)
    except Exception:  # noqa: BLE001
        logging.getLogger("atrium.entry").exception("on_change failed type=%s", change_type)


# Orthanc gives the connection's address to the request filter only; the client's
# (through trusted proxies: atrium.auth.client_address) is kept here for the route
# that serves the request, which runs next on the same HTTP thread. Keyed by the
# thread's id: the filter overwrites it on each request, whatever came before.
_client_ips: dict[int, str] = {}

_METHODS = {
    orthanc.HttpMethod.GET: "GET", orthanc.HttpMethod.POST: "POST",
    orthanc.HttpMethod.PUT: "PUT", orthanc.HttpMethod.DELETE: "DELETE",
}


def incoming_request_filter(uri: str, method: object, ip: str, headers: dict[str, str],
                            get: object = None) -> bool:
    """Intervention: every HTTP request Orthanc receives, before it is routed.
    ``get`` is passed for GET requests only."""
    keep_python_state()  # an HTTP thread lives as long as Orthanc (atrium.thread_state)
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    _client_ips[threading.get_ident()] = _app.request_filter.client_address(ip, lowered)
    name = _METHODS.get(method, str(method))  # type: ignore[call-overload]
    return _app.request_filter.allow(uri, name, ip, lowered)


def _query(arguments: object) -> dict[str, str]:
    """The query string's arguments, decoded: Orthanc 1.10 hands them to plugins as
    they were sent ('a+b', '%25')."""
    return {unquote_plus(str(k)): unquote_plus(str(v))
            for k, v in dict(arguments or {}).items()}  # type: ignore[call-overload]


def _request(path: str, request: dict[str, object]) -> Request:
    """A route callback's arguments as Atrium's request value."""
    headers = {str(k).lower(): str(v) for k, v in dict(request.get("headers") or {}).items()}
    body = request.get("body") or b""
    return Request(
        method=str(request.get("method", "GET")),
        path=path,
        query=_query(request.get("get")),
        headers=headers,
        body=body if isinstance(body, bytes) else str(body).encode(),
        client_ip=_client_ips.get(threading.get_ident(), ""),
    )


@functools.cache
def _plugin_leaks() -> bool:
    """Whether this orthanc-python keeps a reference too many to what it hands an
    HTTP callback (before 4.1: every body, header and argument stays in memory for
    good; see atrium.callback_refs). Asked on the first request, when the REST API
    answers; an unknown version counts as fixed."""
    try:
        version = json.loads(orthanc.RestApiGet("/plugins/python"))["Version"]
    except Exception:  # noqa: BLE001 - a changed answer: counted as fixed
        return False
    return leaky_version(version)


def _releasing(callback: Callable[..., Any]) -> Callable[..., Any]:
    """An HTTP callback (filter or route), giving back what an old plugin leaks."""
    return releasing(callback, _plugin_leaks)


def on_api(output: object, uri: str, **request: object) -> None:
    """Intervention: every ``/api/...`` request."""
    _answer(output, _app.api.handle(_request(uri, request)))


def on_dicomweb(output: object, uri: str, **request: object) -> None:
    """Intervention: every request to the public DICOMweb root (Atrium's gateway).
    A WADO-RS retrieval is sent part by part from this thread as the parts arrive."""
    path = uri[len(PUBLIC_DICOMWEB_ROOT) - 1:]
    _answer(output, _app.dicomweb.handle(_request(path, request)))


def on_viewer(output: object, uri: str, **request: object) -> None:
    """Intervention: ``GET /viewer/...``, OHIF's files (public; see atrium.api.viewer)."""
    from atrium.api.viewer import serve

    assert _app.viewer_site is not None
    path = uri[len("/viewer/"):] if uri.startswith("/viewer/") else ""
    _answer(output, serve(_app.viewer_site, _request(path, request)))


_dicom_log = logging.getLogger("atrium.dicomnet")


def on_find(answers: object, query: object, issuer_aet: str, called_aet: str) -> None:
    """Intervention: every C-FIND (but worklists), in place of Orthanc's own SCP.
    Raising is the plugin's only way to answer a failure status; nothing else
    escapes."""
    try:
        size = query.GetFindQuerySize()  # type: ignore[attr-defined]
        elements = [(query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i),  # type: ignore[attr-defined]
                     query.GetFindQueryValue(i)) for i in range(size)]  # type: ignore[attr-defined]
        assert _app.dicom is not None
        outcome = _app.dicom.find(elements, str(issuer_aet or ""))
    except Exception:  # noqa: BLE001
        _dicom_log.exception("dicom.c_find_error calling_aet=%s", issuer_aet)
        raise RuntimeError("C-FIND could not be answered") from None
    if outcome.failed:
        raise RuntimeError("C-FIND refused")
    for answer in outcome.answers:
        answers.FindAddAnswer(answer)  # type: ignore[attr-defined]
    if outcome.incomplete:
        answers.FindMarkIncomplete()  # type: ignore[attr-defined]


def on_move(**request: object) -> None:
    """Intervention: every C-MOVE, in place of Orthanc's own SCP. orthanc-python 4.0
    reports it to the peer as one sub-operation, whatever was sent."""
    try:
        assert _app.dicom is not None
        _app.dicom.move(request)
    except Exception as error:  # noqa: BLE001 - a failure status, logged once
        _dicom_log.warning("dicom.c_move_failed calling_aet=%s reason=%s",
                           request.get("OriginatorAET"), error)
        raise RuntimeError("C-MOVE failed") from None


def on_modality(output: object, uri: str, **request: object) -> None:
    """Intervention: ``/modalities/{name}``. A definition PUT here is stored with C-GET
    refused (atrium.dicomnet.modalities); the request filter has already let only
    administrators through. Served by Orthanc's built-in API through the SDK, which
    does not come back here."""
    from atrium.api.http import problem_response
    from atrium.api.params import parse_json
    from atrium.dicomnet.modalities import without_get
    from atrium.errors import BadRequest

    method = str(request.get("method", "GET"))
    try:
        if method == "PUT":
            body = parse_json(request.get("body") or b"null")  # type: ignore[arg-type]
            answer = orthanc.RestApiPut(uri, json.dumps(without_get(body)))
        elif method == "DELETE":
            answer = orthanc.RestApiDelete(uri) or b"{}"
        else:
            answer = orthanc.RestApiGet(uri)
    except BadRequest as refused:
        _answer(output, problem_response(refused))
        return
    except (ValueError, orthanc.OrthancException) as error:
        status = 404 if "Unknown" in str(error) or "Inexistent" in str(error) else 400
        _answer(output, Response(status, json.dumps({"error": str(error)}).encode(),
                                 "application/json"))
        return
    body_out = answer if isinstance(answer, bytes) else str(answer or "").encode()
    _answer(output, Response(200, body_out or b"{}", "application/json"))


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterFindCallback(on_find)
orthanc.RegisterMoveCallback(on_move)
orthanc.RegisterRestCallback("/modalities/([^/]+)", _releasing(on_modality))
orthanc.RegisterIncomingHttpRequestFilter(_releasing(incoming_request_filter))
orthanc.RegisterRestCallback("/api/(.*)", _releasing(on_api))
orthanc.RegisterRestCallback(PUBLIC_DICOMWEB_ROOT + "(.*)", _releasing(on_dicomweb))
# Orthanc drops a trailing slash before matching: "/viewer/" arrives as "/viewer".
orthanc.RegisterRestCallback("/viewer(/.*)?", _releasing(on_viewer))
