"""The pool checks a connection only when it has been idle long enough to go stale."""

from __future__ import annotations

from typing import Any

import pytest

from atrium import db


class FakeConnection:
    pass


def test_a_connection_back_a_moment_ago_is_not_checked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[Any] = []
    now = [1000.0]
    monkeypatch.setattr(db.ConnectionPool, "check_connection",
                        staticmethod(lambda conn: checked.append(conn)))
    monkeypatch.setattr(db.time, "monotonic", lambda: now[0])
    recent = db._RecentlyReturned()
    fresh, other = FakeConnection(), FakeConnection()
    recent.check(fresh)
    assert checked == [fresh], "never returned yet: checked"
    recent.reset(fresh)
    now[0] += db.TRUSTED_IDLE_SECONDS - 0.1
    recent.check(fresh)
    recent.check(other)
    assert checked == [fresh, other], "a moment ago: trusted; the other: checked"
    now[0] += 0.2
    recent.check(fresh)
    assert checked == [fresh, other, fresh], "idle long enough to have gone stale"


def test_a_failed_check_propagates_so_the_pool_discards_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(conn: Any) -> None:
        raise OSError("server closed the connection")

    monkeypatch.setattr(db.ConnectionPool, "check_connection", staticmethod(broken))
    with pytest.raises(OSError):
        db._RecentlyReturned().check(FakeConnection())
