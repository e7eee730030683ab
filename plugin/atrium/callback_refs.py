"""The references orthanc-python before 4.1 leaks on every HTTP callback, given back.

Its ``IncomingHttpRequestFilter.cpp`` and ``RestCallbacks.cpp`` (4.0, Debian bookworm's)
build a callback's keyword arguments by handing ``PyDict_SetItemString`` objects whose
reference they have already released to nobody: the dictionary takes a reference of
its own, so each object keeps one reference too many and is never freed. Per request
that is the ``headers`` dictionary and every header value (a bearer token is about a
kilobyte), the ``get`` dictionary and its values, the ``ip`` (filter), the ``method``
string and the ``groups`` tuple (routes), and the body (POST and PUT routes) — and the
filter sees every HTTP request, Atrium's loopback ones included. Under the soak's load
that was Orthanc's resident memory growing about 5 MiB a minute (docs/BENCHMARKS.md,
Soak). 4.1 (2023-08-30) fixed it; an unknown version counts as fixed, because a leak
is recoverable and releasing a reference the plugin did not keep is not.

:func:`releasing` wraps a callback: it collects the leaked objects *before* the call
(so nothing the callback does to its arguments changes what is released) and drops
the extra reference of each once the call is over. A dictionary's values are released
before the dictionary; the plugin's own ``kw`` dictionary still holds everything until
the call returns, so nothing is freed under anyone.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["leaky_version", "leaked_references", "releasing"]

R = TypeVar("R")


def _decref_function() -> Callable[[object], object]:
    """CPython's ``_ctypes.Py_DECREF`` (a builtin taking one object: about a tenth of
    the cost of a foreign call through ``ctypes.pythonapi``, and the filter releases
    a dozen objects on every request), else ``Py_DecRef`` through ctypes."""
    builtin = getattr(_ctypes, "Py_DECREF", None)
    if callable(builtin):
        return builtin
    foreign = ctypes.pythonapi.Py_DecRef
    foreign.argtypes, foreign.restype = [ctypes.py_object], None
    return foreign


_py_decref = _decref_function()


def leaky_version(version: object) -> bool:
    """Whether an orthanc-python version (``/plugins/python``'s ``Version``) leaks:
    before 4.1. Anything unparsable ("mainline") counts as fixed."""
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (4, 1)


def leaked_references(arguments: Mapping[str, object]) -> list[object]:
    """The objects of a callback's keyword ``arguments`` that a leaky plugin gave one
    reference too many, values before their dictionary. Empty strings and bytes are
    left alone: they are interpreter singletons, and keeping them costs nothing."""
    leaked: list[object] = []
    for name in ("headers", "get"):
        mapping = arguments.get(name)
        if type(mapping) is dict:
            leaked.extend(value for value in mapping.values() if type(value) is str and value)
            leaked.append(mapping)
    for name in ("method", "ip", "body"):
        value = arguments.get(name)
        # The filter's ``method`` is a small int (cached by the interpreter): left alone.
        if type(value) in (str, bytes) and value:
            leaked.append(value)
    groups = arguments.get("groups")
    if type(groups) is tuple:
        leaked.append(groups)  # its items belong to the tuple, which took them over
    return leaked


def releasing(callback: Callable[..., R], leaky: Callable[[], bool],
              decref: Callable[[object], object] = _py_decref) -> Callable[..., R]:
    """``callback``, giving back the references a leaky plugin keeps (``leaky()``
    is asked on each call, so it may find the version out lazily)."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **arguments: Any) -> R:
        leaked = leaked_references(arguments) if leaky() else []
        try:
            return callback(*args, **arguments)
        finally:
            for item in leaked:
                decref(item)

    return wrapper
