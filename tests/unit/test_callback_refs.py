"""The references orthanc-python 4.0 leaks on each HTTP callback are given back, once
each, and only when the plugin leaks (atrium.callback_refs)."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import pytest

from atrium.callback_refs import leaked_references, leaky_version, releasing

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes, _incref.restype = [ctypes.py_object], None


def _as_the_plugin_passes_them() -> dict[str, Any]:
    """A route's keyword arguments built as orthanc-python 4.0 builds them: each
    object with one reference more than its containers hold."""
    token = "Bearer " + "x" * 900
    arguments: dict[str, Any] = {
        "method": "PO" + "ST", "groups": ("studies/" + "1.2.3",),
        "headers": {"authorization": token, "accept": "application/" + "json",
                    "empty": ""},
        "get": {"limit": "5" + "0"}, "body": b"{}" * 10}
    for name in ("method", "groups", "body"):
        _incref(arguments[name])
    for name in ("headers", "get"):
        for value in arguments[name].values():
            _incref(value)
        _incref(arguments[name])
    return arguments


def test_every_leaked_reference_is_given_back_once() -> None:
    arguments = _as_the_plugin_passes_them()
    watched = [arguments[n] for n in ("method", "groups", "headers", "get", "body")]
    watched += [v for v in arguments["headers"].values() if v] + list(arguments["get"].values())
    before = [sys.getrefcount(obj) for obj in watched]
    seen: list[bool] = []

    def route(output: object, uri: str, **request: Any) -> str:
        seen.append(request["get"] == {"limit": "50"})  # nothing kept: counts stay exact
        request["headers"] = {}  # what the route does to its arguments changes nothing
        return "answered"

    wrapped = releasing(route, leaky=lambda: True)
    assert wrapped(None, "/api/studies", **arguments) == "answered"
    assert seen == [True]
    after = [sys.getrefcount(obj) for obj in watched]
    assert [b - a for b, a in zip(before, after, strict=True)] == [1] * len(watched)


def test_values_go_before_their_dictionary_and_singletons_stay() -> None:
    headers = {"authorization": "Bearer abc", "empty": ""}
    leaked = leaked_references({"headers": headers, "method": 1, "ip": "127.0.0.1",
                                "body": b""})
    assert leaked == ["Bearer abc", headers, "127.0.0.1"]
    assert leaked.index("Bearer abc") < leaked.index(headers)


def test_nothing_is_released_when_the_plugin_does_not_leak() -> None:
    released: list[object] = []
    wrapped = releasing(lambda **kw: None, leaky=lambda: False, decref=released.append)
    wrapped(headers={"a": "b"}, method="GET", body=b"x")
    assert released == []


def test_released_also_when_the_callback_raises() -> None:
    released: list[object] = []

    def failing(**_: Any) -> None:
        raise RuntimeError("route failed")

    wrapped = releasing(failing, leaky=lambda: True, decref=released.append)
    with pytest.raises(RuntimeError):
        wrapped(ip="10.0.0.1")
    assert released == ["10.0.0.1"]


@pytest.mark.parametrize(("version", "leaks"), [
    ("4.0", True), ("3.4", True), ("4.1", False), ("4.2", False), ("5.0", False),
    ("mainline", False), (None, False)])
def test_only_versions_before_4_1_leak(version: object, leaks: bool) -> None:
    assert leaky_version(version) is leaks
