"""Atrium's Prometheus metrics: what one node counts as it works, and what the
database and the mirror say when a scrape asks.

Two kinds, kept apart on purpose:

* **Counted in the process** (:class:`Metrics`): request latencies by route
  template, answers withheld because their audit row could not be written,
  retention runs. Each costs a dictionary look-up and an ``observe``/``inc`` on
  the path it counts; nothing there touches the database.
* **Read at scrape time** (:class:`StateCollector`): the mirror's cursor and lag,
  its queue of deletions, instances mirrored, job states and the audit chain's
  length. These come from a few small queries run only when ``/api/metrics`` is
  read, never on the request path. They describe the platform, so every node
  reports the same values: aggregate them with ``max``, not ``sum``.

Every :class:`Metrics` has a registry of its own (never the global default), so
two applications in one process, or two tests, never see each other's numbers.
docs/METRICS.md lists every metric and the scrape rule.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

__all__ = ["REQUEST_BUCKETS", "UNMATCHED_ROUTE", "Metrics", "MirrorProbe", "StateCollector"]

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
"""Seconds. Most API answers take 1-20 ms; uploads and SR exports take seconds."""

UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route matched: its raw path never becomes a label
(ids, or whatever a scanner sends, would make a series each)."""

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
"""The ``jobs.status`` values (sql/0005): each is reported for every kind seen, zero
included, so that a state emptying shows as 0 rather than as a vanished series."""


class Metrics:
    """The metrics one Atrium application counts, in a registry of its own.

    Parameters
    ----------
    registry
        Where they are registered; a new :class:`CollectorRegistry` by default.
    process
        Also export the process's CPU, memory and open files (``process_*``), which
        inside Orthanc are Orthanc's own.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._latency = Histogram(
            "atrium_http_request_duration_seconds",
            "Time to answer a request of Atrium's API, audit row included, by route template.",
            ("method", "route"), registry=self.registry, buckets=REQUEST_BUCKETS)
        self._requests = Counter(
            "atrium_http_requests", "Requests of Atrium's API answered, by route template "
            "and status.", ("method", "route", "status"), registry=self.registry)
        self._withheld = Counter(
            "atrium_audit_withheld_answers", "Answers carrying PHI replaced by a 503 because "
            "their audit row could not be written.", registry=self.registry)
        self._retention_runs = Counter(
            "atrium_retention_runs", "Retention runs completed, by kind of data.", ("kind",),
            registry=self.registry)
        self._retention_rows = Counter(
            "atrium_retention_rows", "Rows removed (or archived then removed) by retention, "
            "by kind of data.", ("kind",), registry=self.registry)
        if process:
            ProcessCollector(registry=self.registry)
        # Labelled children by label values: .labels() validates and locks on every
        # call; the request path pays for it once per route, then a dict look-up.
        self._latency_of: dict[tuple[str, str], Any] = {}
        self._requests_of: dict[tuple[str, str, int], Any] = {}

    # -- counted on the request path -------------------------------------------
    def observe_request(self, method: str, route: str | None, status: int, seconds: float,
                        withheld: bool = False) -> None:
        """One answered request. ``route`` is the route's template
        (``/api/studies/{id}``), None when no route matched."""
        if route is None:
            route = UNMATCHED_ROUTE
            if method not in _METHODS:
                method = "other"
        latency = self._latency_of.get((method, route))
        if latency is None:
            latency = self._latency_of[(method, route)] = self._latency.labels(method, route)
        latency.observe(seconds)
        requests = self._requests_of.get((method, route, status))
        if requests is None:
            requests = self._requests_of[(method, route, status)] = self._requests.labels(
                method, route, str(status))
        requests.inc()
        if withheld:
            self._withheld.inc()

    # -- counted by background work ----------------------------------------------
    def record_retention_run(self, kind: str, rows: int) -> None:
        """One retention run over ``kind`` of data (``audit``, ``predictions``,
        ``jobs``...) that removed ``rows`` rows (0 is a run too).

        Raises
        ------
        ValueError
            For a kind that is not a short lower-case name (it becomes a label
            value: it must come from code, never from input) or negative rows.
        """
        if not _KIND.match(kind):
            raise ValueError(f"retention kind must be a lower-case name of at most 40 "
                             f"characters (a-z, 0-9, _), got {kind!r}")
        if rows < 0:
            raise ValueError(f"rows must be zero or more, got {rows}")
        self._retention_runs.labels(kind).inc()
        self._retention_rows.labels(kind).inc(rows)

    # -- read at scrape time -------------------------------------------------------
    def watch(self, collector: StateCollector) -> None:
        """Add the scrape-time readings of the database and the mirror."""
        self.registry.register(collector)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the text format ``accept`` prefers (OpenMetrics when the
        scraper asks for it, Prometheus' text format otherwise): (body, content type)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class MirrorProbe(Protocol):
    """What a scrape reads from the running mirror (:class:`atrium.mirror.sync.MirrorWorker`)."""

    @property
    def pending_deletions(self) -> int: ...

    last_success: float | None
    last_error: str | None


@dataclass(frozen=True)
class _State:
    audit_rows: int
    cursor: int
    cursor_updated: float
    instances_inserted: int
    jobs: list[tuple[str, str, int]]
    quarantined: int


# One round trip for the single-row readings; each is an index or catalogue read.
# n_tup_ins counts rows inserted into instances since PostgreSQL's statistics were
# last reset: the mirror's upserts of new instances (an upsert of a known one counts
# as an update), from every node.
_READINGS = """
SELECT (SELECT seq FROM audit_chain_head),
       (SELECT last_seq FROM mirror_state WHERE name = 'orthanc'),
       (SELECT extract(epoch FROM updated_at) FROM mirror_state WHERE name = 'orthanc'),
       (SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'instances'::regclass),
       (SELECT count(*) FROM quarantined_instances)
"""
_JOBS = "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status"


class StateCollector:
    """Readings taken when a scrape asks: a custom collector of ``prometheus_client``.

    ``connect`` borrows a database connection; ``last_change`` returns Orthanc's
    last change number (``/changes?last``); ``mirror`` is the running mirror worker,
    or None where there is none (the ``atrium`` command). A reading that fails is
    left out of that scrape and ``atrium_scrape_source_up`` says which.
    """

    def __init__(self, connect: Callable[[], Any], last_change: Callable[[], int] | None = None,
                 mirror: MirrorProbe | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        self._connect = connect
        self._last_change = last_change
        self._mirror = mirror
        self._clock = clock

    def _read(self) -> _State:
        with self._connect() as conn:
            audit_rows, cursor, updated, inserted, quarantined = conn.execute(
                _READINGS).fetchone()
            jobs = [(str(k), str(s), int(n)) for k, s, n in conn.execute(_JOBS).fetchall()]
        return _State(int(audit_rows or 0), int(cursor or 0), float(updated or 0),
                      int(inserted or 0), jobs, int(quarantined or 0))

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        up = GaugeMetricFamily("atrium_scrape_source_up", "Whether a source of scrape-time "
                               "readings answered this scrape (1) or not (0).",
                               labels=("source",))
        try:
            state: _State | None = self._read()
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it never fails
            log.warning("metrics.database_unreadable error=%s", type(exc).__name__)
            state = None
        up.add_metric(("database",), 1 if state else 0)
        if state is not None:
            yield from self._database_metrics(state)
        if self._last_change is not None:
            try:
                last_change: int | None = int(self._last_change())
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics.orthanc_unreadable error=%s", type(exc).__name__)
                last_change = None
            up.add_metric(("orthanc",), 0 if last_change is None else 1)
            if last_change is not None and state is not None:
                yield _gauge("atrium_mirror_lag_changes", "Orthanc changes not yet applied to "
                             "the mirror: Orthanc's last change minus the mirror's cursor.",
                             max(last_change - state.cursor, 0))
        if self._mirror is not None:
            yield from self._worker_metrics(self._mirror)
        yield up
        yield _gauge("atrium_scrape_collect_seconds", "Time the scrape-time readings took.",
                     time.perf_counter() - began)

    def _database_metrics(self, state: _State) -> Iterator[Metric]:
        yield _counter("atrium_audit_rows", "Audit rows written, all nodes (the chain "
                       "head's seq; rows removed by retention stay counted).", state.audit_rows)
        yield _gauge("atrium_mirror_cursor", "The last Orthanc change applied to the mirror.",
                     state.cursor)
        yield _gauge("atrium_mirror_cursor_age_seconds", "Seconds since the mirror's cursor "
                     "last moved (it stays put while Orthanc receives nothing).",
                     max(self._clock() - state.cursor_updated, 0.0))
        yield _counter("atrium_mirror_instances", "Instances added to the mirror, all nodes, "
                       "since PostgreSQL's statistics were last reset.", state.instances_inserted)
        yield _gauge("atrium_mirror_quarantined_instances", "Instances set aside instead of "
                     "mirrored (docs/MIRROR.md).", state.quarantined)
        jobs = GaugeMetricFamily("atrium_jobs", "Background jobs kept in the jobs table, by "
                                 "kind and status.", labels=("kind", "status"))
        counts = {(kind, status): n for kind, status, n in state.jobs}
        for kind in sorted({kind for kind, _ in counts}):
            for status in JOB_STATUSES:
                jobs.add_metric((kind, status), counts.get((kind, status), 0))
        yield jobs

    def _worker_metrics(self, mirror: MirrorProbe) -> Iterator[Metric]:
        yield _gauge("atrium_mirror_pending_deletions", "Deletions reported by Orthanc and "
                     "queued for the mirror, on this node.", mirror.pending_deletions)
        last = mirror.last_success
        if last is not None:
            yield _gauge("atrium_mirror_seconds_since_sync", "Seconds since this node's mirror "
                         "last finished a pass without error.", max(self._clock() - last, 0.0))
        yield _gauge("atrium_mirror_healthy", "Whether this node's mirror's last pass "
                     "succeeded (1) or it is retrying after an error (0).",
                     0 if mirror.last_error else 1)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
