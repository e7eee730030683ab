"""A thread that Python did not create keeps its Python state once asked to.

The thread is started natively (pthread_create) with a ctypes callback, which
enters Python exactly as orthanc-python does: ``PyGILState_Ensure``, the call,
``PyGILState_Release``. What the thread put in a ``threading.local`` lives as
long as its thread state, so whether it survives the callback says whether the
state was kept."""

from __future__ import annotations

import ctypes
import threading
import weakref

import pytest

from atrium.thread_state import keep_python_state

_START = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)


class _Held:
    pass


def _run_natively(body: object) -> None:
    libc = ctypes.CDLL(None)
    thread = ctypes.c_ulong()
    start = _START(lambda _arg: body())  # type: ignore[operator]
    assert libc.pthread_create(ctypes.byref(thread), None, start, None) == 0
    assert libc.pthread_join(thread, None) == 0


def _held_after_the_callback(keep: bool) -> bool:
    local = threading.local()
    held: list[weakref.ref[_Held]] = []

    def body() -> None:
        if keep:
            keep_python_state()
        local.value = _Held()
        held.append(weakref.ref(local.value))

    _run_natively(body)
    return held[0]() is not None


def test_without_it_a_native_thread_loses_its_python_state_after_each_call() -> None:
    assert not _held_after_the_callback(keep=False)


def test_a_kept_state_outlives_the_call_that_kept_it() -> None:
    assert _held_after_the_callback(keep=True)


def test_a_thread_is_kept_once_however_many_requests_it_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ensured: list[int] = []
    monkeypatch.setattr(ctypes.pythonapi, "PyGILState_Ensure",
                        lambda: ensured.append(threading.get_ident()))

    def serve_three() -> None:
        for _ in range(3):
            keep_python_state()

    threads = [threading.Thread(target=serve_three) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ensured) == sorted(thread.ident for thread in threads)
