"""Orthanc's HTTP threads keep their Python thread state between requests.

orthanc-python enters Python on an Orthanc thread with ``PyGILState_Ensure`` and
leaves with ``PyGILState_Release``. On a thread that Python did not create, the
release deletes the thread state the ensure created: every callback builds a new
one and tears it down, and in Python 3.11 that includes mapping and unmapping its
frame stack — all with the GIL held, twice per request (the request filter, then
the route). One ensure that is never released keeps the state alive, so the
plugin's own ensure and release only take and give back the GIL.

Only for threads that live as long as Orthanc (its HTTP server's): a kept state
is never freed before the interpreter is.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["keep_python_state"]

# Lives exactly as long as a thread state: unset on a state not yet kept, however
# its thread id was used before (ids of finished threads are reused).
_kept = threading.local()


def keep_python_state() -> None:
    """Call with the GIL held, from the thread whose state is to be kept."""
    if not getattr(_kept, "done", False):
        ctypes.pythonapi.PyGILState_Ensure()  # paired with no release, on purpose
        _kept.done = True
