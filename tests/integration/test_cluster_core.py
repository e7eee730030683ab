"""The two mechanisms nodes share through PostgreSQL, against a real server: the
mirror's lead (a session advisory lock) and the bus (LISTEN/NOTIFY)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from atrium.cluster.bus import ClusterBus, publish
from atrium.cluster.leadership import Leadership, leader_of
from atrium.devenv import wait_until

pytestmark = pytest.mark.integration


def node(db_url: str, name: str) -> Leadership:
    return Leadership(db_url, name, check_seconds=0, retry_seconds=0)


def test_one_node_leads_and_the_other_takes_over_when_it_lets_go(db_url: str,
                                                                   db: Any) -> None:
    first, second = node(db_url, "node-a"), node(db_url, "node-b")
    try:
        assert first.refresh() is True
        assert second.refresh() is False
        assert leader_of(db) == "node-a"
        first.release()
        assert first.leading is False
        assert second.refresh() is True
        assert leader_of(db) == "node-b"
        assert first.refresh() is False  # it stands by now
    finally:
        first.release()
        second.release()
    assert leader_of(db) is None


def test_a_leader_whose_session_is_ended_stops_leading(db_url: str, db: Any) -> None:
    first, second = node(db_url, "node-a"), node(db_url, "node-b")
    try:
        assert first.refresh() is True
        ended = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name = 'atrium-leader:node-a'").fetchone()[0]
        assert ended == 1
        assert second.refresh() is True  # the server released the lock with the session
        assert first.refresh() is False  # and the old leader notices on its next check
        assert first.refresh() is False
        assert leader_of(db) == "node-b"
    finally:
        first.release()
        second.release()


def test_the_lease_is_rechecked_only_every_check_seconds(db_url: str) -> None:
    now = [0.0]
    leadership = Leadership(db_url, "node-a", check_seconds=5, retry_seconds=5,
                            clock=lambda: now[0])
    try:
        assert leadership.refresh() is True
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'atrium-leader:node-a'")
        now[0] = 4.0
        assert leadership.refresh() is True  # no round trip yet: what it last knew
        now[0] = 5.0
        assert leadership.refresh() is False
    finally:
        leadership.release()


class Heard:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.resyncs = 0
        self.lock = threading.Lock()

    def __call__(self, detail: str) -> None:
        with self.lock:
            self.messages.append(detail)

    def resync(self) -> None:
        self.resyncs += 1


def test_the_bus_delivers_committed_messages_only(db_url: str) -> None:
    bus = ClusterBus(db_url, "node-a")
    heard, other = Heard(), Heard()
    bus.subscribe("slide", heard, resync=heard.resync)
    bus.subscribe("identities", other)
    bus.start()
    try:
        assert bus.listening.wait(10)
        assert heard.resyncs == 1  # at the first LISTEN too: the cache may have filled
        with psycopg.connect(db_url) as conn:
            publish(conn, "slide", "rolled-back")
            conn.rollback()
            publish(conn, "slide", "kept")
            assert heard.messages == []  # not before the commit
            conn.commit()
        wait_until(lambda: heard.messages == ["kept"], 5, what="the committed message")
        assert other.messages == []
    finally:
        bus.stop()


def test_a_bus_that_lost_its_connection_listens_again_and_resyncs(db_url: str,
                                                                  db: Any) -> None:
    bus = ClusterBus(db_url, "node-a")
    heard = Heard()

    def broken(_: str) -> None:
        raise RuntimeError("a handler's failure")

    bus.subscribe("slide", broken)
    bus.subscribe("slide", heard, resync=heard.resync)
    bus.start()
    try:
        assert bus.listening.wait(10)
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'atrium-bus:node-a'")
        wait_until(lambda: heard.resyncs >= 2 and bus.listening.is_set(), 15,
                   what="the bus to listen again")
        publish(db, "slide", "after")
        wait_until(lambda: heard.messages == ["after"], 5,
                   what="a message after the reconnect, past a failing handler")
    finally:
        bus.stop()
