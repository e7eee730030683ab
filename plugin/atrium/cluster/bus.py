"""What one node changes, the others hear: PostgreSQL ``LISTEN``/``NOTIFY``.

A cache that may not be stale by design subscribes to a topic; the route that makes
the change publishes on the same transaction (``pg_notify`` is delivered at commit,
and only then), so no node hears of a change that was rolled back. The node that
published hears its own message too.

A node that loses its listening connection can miss messages. When it listens again
every subscriber's ``resync`` runs first — a cache forgets everything — so a
reconnect costs some cache misses, never a stale answer beyond the outage.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger(__name__)

__all__ = ["CHANNEL", "ClusterBus", "publish"]

CHANNEL = "atrium_cluster"
MAX_BACKOFF_SECONDS = 10.0

Handler = Callable[[str], None]  # called with the message's detail


def publish(conn: Any, topic: str, detail: str = "") -> None:
    """Tell every node (this one included) at the commit of ``conn``'s transaction."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps([topic, detail])))


class ClusterBus:
    """This node's listening connection and what it calls on each message."""

    def __init__(self, url: str, node: str, connect: Callable[..., Any] = psycopg.connect
                 ) -> None:
        self.node = node
        self._url = url
        self._connect = connect
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._resyncs: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def subscribe(self, topic: str, handler: Handler,
                  resync: Callable[[], None] | None = None) -> None:
        """``handler(detail)`` on each message of ``topic``; ``resync()`` whenever
        messages may have been missed (see the module's docstring)."""
        self._handlers[topic].append(handler)
        if resync is not None:
            self._resyncs.append(resync)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="atrium-bus", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def dispatch(self, payload: str) -> None:
        """Call the handlers of one message; a bad message or handler is logged."""
        try:
            topic, detail = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("bus.bad_message payload=%r", payload[:200])
            return
        for handler in self._handlers.get(str(topic), ()):
            try:
                handler(str(detail))
            except Exception as exc:  # noqa: BLE001 - one handler must not stop the others
                log.warning("bus.handler_failed topic=%s error=%r", topic, exc)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - listen again; resync covers the gap
                log.warning("bus.retry error=%r backoff_s=%.1f", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                self.listening.clear()

    def _listen(self) -> None:
        with self._connect(self._url, autocommit=True, connect_timeout=5,
                           application_name=f"atrium-bus:{self.node}"[:63]) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            for resync in self._resyncs:
                resync()
            self.listening.set()
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=1.0):
                    self.dispatch(notify.payload)
                # a connection the server ended raises here rather than idling forever
                conn.execute("SELECT 1")
