"""Keeping the mirror in step with Orthanc.

Three mechanisms, each covering what the others cannot:

* **Replay of Orthanc's change log** (``/changes``), from the cursor persisted in
  ``mirror_state``. The log is written in the same transaction as the instance, so
  it survives crashes and ``kill -9``; the cursor advances in the same transaction
  as the rows, so nothing is skipped and a replay is harmless.
* **Live events** only *wake* the worker (a new instance) or queue a deletion:
  Orthanc never logs deletions. They cost Orthanc's threads next to nothing.
* **A periodic full comparison** (:mod:`atrium.mirror.verify`) finds deletions whose
  live event was lost (Atrium down, a crash).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atrium.mirror.extract import (
    TAGS_FROM_FILE,
    TAGS_FROM_INDEX,
    InstanceRecord,
    MissingIdentifier,
    decode_text,
    extract_instance,
    long_value_keywords,
    series_header,
    tag_path,
)
from atrium.mirror.orthanc_index import InstanceFacts, OrthancIndex
from atrium.mirror.quarantine import InstanceGuard
from atrium.mirror.writer import LEVELS, MirrorWriter
from atrium.orthanc_api import OrthancApi, OrthancError, iter_changes

if TYPE_CHECKING:
    from atrium.cluster.leadership import Leadership

log = logging.getLogger(__name__)

__all__ = ["Mirror", "MirrorWorker", "OrganizationResolver"]

# Changes after which an instance's rows must be (re)written.
INSTANCE_CHANGES = frozenset({"NewInstance", "UpdatedAttachment", "UpdatedMetadata"})

LEVEL_PATHS = {"Patient": "patients", "Study": "studies", "Series": "series",
               "Instance": "instances"}

OrganizationResolver = Callable[[dict[str, Any]], str]
"""Orthanc's metadata of an instance (``RemoteAET``, ``Origin``...) → organization name."""


Outcome = InstanceRecord | str  # a record, "gone", "rejected" or "quarantined"


@dataclass
class FetchResult:
    records: list[InstanceRecord]
    gone: int = 0
    rejected: int = 0
    quarantined: int = 0

    def add(self, outcome: Outcome) -> FetchResult:
        if isinstance(outcome, InstanceRecord):
            self.records.append(outcome)
        elif outcome == "gone":
            self.gone += 1
        elif outcome == "quarantined":
            self.quarantined += 1
        else:
            self.rejected += 1
        return self

    def merge(self, other: FetchResult) -> None:
        self.records.extend(other.records)
        self.gone += other.gone
        self.rejected += other.rejected
        self.quarantined += other.quarantined


class SeriesHeaders:
    """The last few thousand series headers read, by Orthanc series id. Forgotten
    whenever something is deleted: a series deleted and stored again may carry
    other patient or study attributes."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._headers: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, series_id: str) -> dict[str, Any] | None:
        with self._lock:
            header = self._headers.get(series_id)
            if header is not None:
                self._headers.move_to_end(series_id)
            return header

    def put(self, series_id: str, header: dict[str, Any]) -> None:
        with self._lock:
            self._headers[series_id] = header
            while len(self._headers) > self.capacity:
                self._headers.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._headers.clear()


class Mirror:
    """Reads instances from Orthanc and writes them through a :class:`MirrorWriter`."""

    def __init__(self, api: OrthancApi, writer: MirrorWriter,
                 organization_for: OrganizationResolver, batch_size: int = 500,
                 fetch_workers: int = 1, index: OrthancIndex | None = None,
                 guard: InstanceGuard | None = None) -> None:
        self.api = api
        self.index = index
        self.guard = guard
        self.writer = writer
        self.organization_for = organization_for
        self.batch_size = batch_size
        self.fetch_workers = fetch_workers
        self._headers = SeriesHeaders()
        self._tags_sweep_after: Any = None

    # -- reading Orthanc ------------------------------------------------------
    def file_tags(self, instance_id: str) -> dict[str, Any]:
        """The whole header of an instance's file, as Orthanc parses it."""
        base = f"/instances/{instance_id}"
        tags: dict[str, Any] = self.api.get_json(f"{base}/tags?simplify")
        for keyword in long_value_keywords(tags):
            # Orthanc's JSON answers null for values over 256 bytes; read them raw.
            raw = self.api.get_bytes(f"{base}/content/{tag_path(keyword)}")
            tags[keyword] = decode_text(raw, tags.get("SpecificCharacterSet"))
        return tags

    def _record(self, instance_id: str, tags: dict[str, Any], size: int,
                metadata: dict[str, Any], tags_source: str) -> InstanceRecord:
        return extract_instance(
            tags,
            instance_orthanc_id=instance_id,
            file_size=size,
            orthanc_metadata=metadata,
            organization=self.organization_for(metadata),
            tags_source=tags_source,
        )

    def fetch(self, instance_ids: Sequence[str]) -> FetchResult:
        """Records of these instances. With Orthanc's index at hand, one query gives
        every instance's own main tags, size and metadata, and one file per series
        gives what the instances of the series share: Orthanc parses one file per
        series instead of one per instance. Without it, every file is read."""
        unique = list(dict.fromkeys(instance_ids))
        facts: dict[str, InstanceFacts] | None = None
        if self.index is not None and unique:
            try:
                facts = self.index.instance_facts(unique)
            except Exception as exc:  # noqa: BLE001 - the REST API still answers
                log.warning("mirror.index_unavailable error=%r; reading through REST", str(exc))
        if facts is None:
            return self._fetch_files(unique)
        known = facts
        result = FetchResult(records=[], gone=sum(1 for i in unique if i not in known))
        by_series: dict[str, list[str]] = {}
        for instance_id in unique:
            if instance_id in known:
                by_series.setdefault(known[instance_id].series_id, []).append(instance_id)
        for part in self._map(lambda ids: self._fetch_series(ids, known),
                              list(by_series.values())):
            result.merge(part)
        return result

    def _fetch_series(self, instance_ids: list[str], facts: dict[str, InstanceFacts]
                      ) -> FetchResult:
        """Records of instances of one series, from the series header (cached, or read
        from the first file of the batch that Orthanc still has) and the index."""
        result = FetchResult(records=[])
        series_id = facts[instance_ids[0]].series_id
        header = self._headers.get(series_id)
        remaining = list(instance_ids)
        while header is None and remaining:
            first = remaining.pop(0)
            outcome, tags = self._one_file(first, facts[first])
            result.add(outcome)
            if tags is not None:
                header = series_header(tags)
                self._headers.put(series_id, header)
        if header is None:
            return result  # every instance of the batch has gone
        for instance_id in remaining:
            known = facts[instance_id]
            try:
                record: Outcome = self._record(instance_id, {**header, **known.main_tags},
                                               known.file_size, known.metadata,
                                               TAGS_FROM_INDEX)
            except MissingIdentifier as exc:
                log.warning("mirror.rejected instance=%s reason=%r", instance_id, str(exc))
                record = "rejected"
            result.add(record)
        return result

    def _one_file(self, instance_id: str, facts: InstanceFacts | None
                  ) -> tuple[Outcome, dict[str, Any] | None]:
        """One instance read from its file: (record, "gone", "rejected" or
        "quarantined"; its tags). Orthanc parses the file only once the guard has
        admitted it, and under the guard's crash memory."""
        try:
            if self.guard is None:
                tags = self.file_tags(instance_id)
            elif not self.guard.admit(instance_id):
                return "quarantined", None
            else:
                with self.guard.parsing(instance_id):
                    tags = self.file_tags(instance_id)
            if facts is None:
                base = f"/instances/{instance_id}"
                size = int(self.api.get_json(base).get("FileSize", 0))
                metadata = self.api.get_json(f"{base}/metadata?expand")
            else:
                size, metadata = facts.file_size, facts.metadata
            return self._record(instance_id, tags, size, metadata, TAGS_FROM_FILE), tags
        except OrthancError as exc:
            if exc.status == 404:
                return "gone", None  # deleted since it was logged: nothing to mirror
            raise
        except MissingIdentifier as exc:
            log.warning("mirror.rejected instance=%s reason=%r", instance_id, str(exc))
            return "rejected", None

    def _fetch_files(self, instance_ids: list[str],
                     facts: dict[str, InstanceFacts] | None = None) -> FetchResult:
        """Records of these instances, each read from its file."""
        def one(instance_id: str) -> FetchResult:
            if facts is not None and instance_id not in facts:
                return FetchResult(records=[], gone=1)
            outcome, _ = self._one_file(instance_id, facts.get(instance_id) if facts else None)
            return FetchResult(records=[]).add(outcome)

        result = FetchResult(records=[])
        for part in self._map(one, instance_ids):
            result.merge(part)
        return result

    def _map(self, work: Callable[[Any], FetchResult], items: list[Any]) -> list[FetchResult]:
        if self.fetch_workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(self.fetch_workers) as pool:
                return list(pool.map(work, items))
        return [work(item) for item in items]

    def complete_tags(self, limit: int = 100) -> int:
        """Replace the index-only tags of up to ``limit`` instances by their files'
        whole headers; returns how many instances were looked at (0: none left).
        Sweeps the table by id, so instances that cannot be read do not block it."""
        ids = self.writer.instances_with_index_tags(self._tags_sweep_after, limit)
        if not ids:
            self._tags_sweep_after = None
            return 0
        self._tags_sweep_after = ids[-1][0]
        facts = self.index.instance_facts([o for _, o in ids]) if self.index else None
        fetched = self._fetch_files([o for _, o in ids], facts)
        self.writer.apply(fetched.records)
        return len(ids)

    def ingest(self, instance_ids: Sequence[str], cursor_seq: int | None = None) -> int:
        """Fetch and write these instances (in batches); returns how many were written."""
        ids = list(instance_ids)
        chunks = [ids[i:i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        if not chunks:
            self.writer.apply([], cursor_seq)
            return 0
        return self.ingest_batches(
            (chunk, cursor_seq if n == len(chunks) - 1 else None)
            for n, chunk in enumerate(chunks))

    def ingest_batches(self, batches: Iterable[tuple[Sequence[str], int | None]],
                       on_written: Callable[[int], None] | None = None) -> int:
        """Write each (instance ids, cursor) batch in its own transaction, reading the
        next batch from Orthanc while the current one is written: reads and writes
        load different processes, so overlapping them nearly halves a long ingest."""
        written = 0
        batches = iter(batches)
        with ThreadPoolExecutor(1, thread_name_prefix="atrium-prefetch") as prefetch:

            def read_next() -> Any:
                batch = next(batches, None)
                if batch is None:
                    return None
                ids, cursor = batch
                return prefetch.submit(lambda: (self.fetch(ids), cursor, len(ids)))

            pending = read_next()
            while pending is not None:
                fetched, cursor, listed = pending.result()
                pending = read_next()
                written += self.writer.apply(fetched.records, cursor)
                if on_written:
                    on_written(listed)
        return written

    # -- the change log ---------------------------------------------------------
    def catch_up(self) -> int:
        """Apply Orthanc's change log from the persisted cursor to its end."""
        since = self.writer.cursor()
        applied = 0
        for changes, last, _done in iter_changes(self.api, since, self.batch_size):
            ids = [c["ID"] for c in changes
                   if c.get("ChangeType") in INSTANCE_CHANGES and c.get("ResourceType") ==
                   "Instance"]
            if not changes and last <= since:
                break
            applied += self.ingest(ids, cursor_seq=last)
            since = last
        return applied

    def last_change(self) -> int:
        return int(self.api.get_json("/changes?last").get("Last", 0))

    # -- deletions ------------------------------------------------------------
    def still_exists(self, level: str, orthanc_id: str) -> bool:
        try:
            self.api.get_json(f"/{LEVEL_PATHS[level]}/{orthanc_id}")
        except OrthancError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def forget_headers(self) -> None:
        """Forget the cached series headers: resources were deleted, here or on
        another node, and a series stored again may differ."""
        self._headers.clear()

    def apply_deletions(self, deletions: Iterable[tuple[str, str]]) -> int:
        """Soft-delete resources that Orthanc no longer has. Each is checked first: a
        resource deleted and stored again before its event was handled stays live."""
        self._headers.clear()
        by_level: dict[str, list[str]] = {}
        for level, orthanc_id in deletions:
            if level in LEVEL_PATHS and not self.still_exists(level, orthanc_id):
                by_level.setdefault(level, []).append(orthanc_id)
        touched = 0
        for level in LEVELS[::-1]:  # Patient first: its cascade covers the rest
            if by_level.get(level):
                touched += self.writer.soft_delete(level, by_level[level])
        return touched


class MirrorWorker:
    """The one long-lived thread that keeps the mirror in step.

    ``notify_*`` are called from Orthanc's callback threads: they only append to a
    deque and set an event, never block, never raise.
    """

    def __init__(self, mirror: Mirror, *, prepare: Callable[[], None],
                 full_check: Callable[[], None] | None = None,
                 poll_seconds: float = 5.0, full_check_seconds: float = 3600.0,
                 gather_seconds: float = 0.2, idle_seconds: float = 1.0,
                 leadership: Leadership | None = None,
                 on_lead: Callable[[], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        """``leadership``: this node's claim to be the one mirror writer (None: a
        node alone). ``on_lead`` runs each time the node begins leading (the
        first-start backfill). ``announce(event)`` tells the other nodes that this
        one ``stored`` instances (the leader's cue to read the change log) or
        applied ``deleted`` resources (their cached series headers go)."""
        self.mirror = mirror
        self.gather_seconds = gather_seconds
        self.idle_seconds = idle_seconds
        self._last_new_instance = 0.0
        self.prepare = prepare
        self.full_check = full_check
        self.poll_seconds = poll_seconds
        self.full_check_seconds = full_check_seconds
        self.leadership = leadership
        self.on_lead = on_lead
        self.announce = announce
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deletions: deque[tuple[str, str]] = deque(maxlen=1_000_000)
        self._thread: threading.Thread | None = None
        self._prepared = False
        self._led = False  # on_lead ran for the current term
        self._stored_here = False
        self._next_full_check = time.monotonic() + full_check_seconds
        self.last_error: str | None = None
        self.last_success: float | None = None

    # -- notifications (Orthanc's threads) ----------------------------------------
    def notify_new(self) -> None:
        self._stored_here = True
        self._wake.set()

    def notify_elsewhere(self) -> None:
        """Another node stored instances: the leader reads the change log now."""
        self._wake.set()

    def notify_deleted(self, level: str, orthanc_id: str) -> None:
        self._deletions.append((level, orthanc_id))
        self._wake.set()

    @property
    def prepared(self) -> bool:
        """Whether start-up work (migrations first) is done: other workers wait for it."""
        return self._prepared

    @property
    def leading(self) -> bool:
        """Whether this node writes the mirror and runs the work done once."""
        return self._prepared and (self.leadership is None or self.leadership.leading)

    @property
    def pending_deletions(self) -> int:
        return len(self._deletions)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="atrium-mirror", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.leadership is not None:
            self.leadership.release()

    def _idle_wait(self) -> float:
        """A standby looks at the lock every second or so, whatever the poll."""
        if self.leadership is not None and not self.leadership.leading:
            return min(self.poll_seconds, 1.0)
        return self.poll_seconds

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                more = self.step()
                backoff = 0.5
                self.last_error = None
                self.last_success = time.time()
                if more:
                    continue
                if self._wake.wait(self._idle_wait()):
                    # Let a burst of stores gather: one batch of many instances costs
                    # Orthanc and PostgreSQL far less than many batches of one.
                    self._stop.wait(self.gather_seconds)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any failure
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("mirror.retry error=%r backoff_s=%.1f", self.last_error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def step(self) -> bool:
        """One pass: migrations once, queued deletions, the change log, the full
        comparison when due, and — only when no instance arrived for ``idle_seconds``
        — one batch of headers to complete, so that this work never competes with a
        burst of stores. Returns whether headers remain to complete. Raises on
        failure; nothing is lost (the deletions stay queued, the cursor has not
        moved)."""
        self._wake.clear()
        if not self._prepared:
            self.prepare()
            self._prepared = True
        if self._deletions:
            pending = list(self._deletions)
            # Only the node Orthanc told can apply them: deletions are not in the
            # shared change log. Each is checked against Orthanc first, so two
            # nodes applying the same one is harmless.
            self.mirror.apply_deletions(pending)
            for _ in pending:
                self._deletions.popleft()
            if self.announce is not None:
                self.announce("deleted")
        if not self._lead():
            if self._stored_here and self.announce is not None:
                self._stored_here = False
                self.announce("stored")
            return False
        self._stored_here = False
        if self.mirror.catch_up():
            self._last_new_instance = time.monotonic()
        if self.full_check is not None and time.monotonic() >= self._next_full_check:
            self.full_check()
            self._next_full_check = time.monotonic() + self.full_check_seconds
        if time.monotonic() - self._last_new_instance < self.idle_seconds:
            self._wake.set()  # come back when the burst may be over
            return False
        return self.mirror.complete_tags() > 0

    def _lead(self) -> bool:
        """Whether this node leads, running ``on_lead`` at the start of each term."""
        leading = self.leadership is None or self.leadership.refresh()
        if not leading:
            self._led = False
            return False
        if not self._led:
            if self.on_lead is not None:
                self.on_lead()
            self._led = True
        return True
