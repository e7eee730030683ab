"""The Atrium application: settings in, collaborators wired, routes out.

Built once by the Orthanc entry script (``atrium_entry.py``) with the SDK-backed
Orthanc API, or by tests with any :class:`~atrium.orthanc_api.OrthancApi`.
Nothing here runs at import time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from atrium.annotations.importer import SrImporter
from atrium.api import (
    annotation_reports,
    audit,
    audit_export,
    health,
    instances,
    jobs,
    me,
    mirror_status,
    models,
    openapi,
    organizations,
    patients,
    predictions,
    recordings,
    slide_annotation_reports,
    slide_viewer,
    slides,
    studies,
    uploads,
    users,
    viewer,
)
from atrium.api import annotations as annotation_routes  # not `annotations`: __future__
from atrium.api import metrics as metrics_routes  # not `metrics`: Atrium.metrics
from atrium.api.http import Route, Router
from atrium.api.scope import SourceOrganizations
from atrium.auth.guard import AuthGuard, Identities
from atrium.auth.internal import INTERNAL_HEADER, internal_secret
from atrium.auth.request_audit import AuditedApi
from atrium.auth.request_filter import RequestFilter
from atrium.auth.tokens import validator_for
from atrium.cache import ByteLru
from atrium.cluster.bus import ClusterBus, publish
from atrium.cluster.leadership import Leadership
from atrium.db import open_pool
from atrium.dicom.scan import DEFAULT_LIMITS, DicomLimits
from atrium.dicomnet.policy import AetPolicy
from atrium.dicomnet.service import DicomNetwork
from atrium.dicomweb.forward import PluginForwarder
from atrium.dicomweb.gateway import DicomWebGateway
from atrium.errors import NotFound, ServiceUnavailable
from atrium.jobs import INTERRUPTED_ADVICE, Runner, recover_orphans
from atrium.memtrace import MemoryTrace
from atrium.metrics import Metrics, StateCollector
from atrium.migrations import apply_migrations
from atrium.mirror.backfill import backfill, needs_backfill
from atrium.mirror.orthanc_index import OrthancIndex
from atrium.mirror.quarantine import InstanceGuard, ParseMemory, Quarantine
from atrium.mirror.sync import Mirror, MirrorWorker
from atrium.mirror.verify import compare, repair
from atrium.mirror.writer import MirrorWriter
from atrium.operations import wiring as operations
from atrium.operations.partitions import upkeep
from atrium.operations.retention import RunReport
from atrium.operations.scheduled import ScheduledTask
from atrium.orthanc_api import HttpOrthancApi, OrthancApi, OrthancError
from atrium.settings import PUBLIC_DICOMWEB_ROOT, Settings
from atrium.signals import codec
from atrium.signals.waveform_registry import WaveformRegistry
from atrium.slides.ann_importer import AnnImporter
from atrium.slides.dicom_wsi import FrameReader, open_dicom_slide
from atrium.slides.library import SlideLibrary
from atrium.slides.model import SlideReader
from atrium.slides.wsi_registry import WsiRegistry
from atrium.storage import ObjectStore, S3ObjectStore, open_store
from atrium.uploads.store import UploadLimits, UploadStore
from atrium.viewer.site import OhifSite

log = logging.getLogger(__name__)

__all__ = ["Atrium", "build_mirror", "orthanc_client", "organization_resolver"]


def _compile_codec() -> None:
    try:
        codec.compile_loops()
    except RuntimeError:
        log.exception("signals.codec_compile_failed (signal requests will try again)")


def orthanc_client(settings: Settings) -> HttpOrthancApi:
    """Orthanc's REST API over HTTP, with Atrium's internal credential."""
    return HttpOrthancApi(settings.orthanc_url,
                          headers={INTERNAL_HEADER: internal_secret(settings.data_dir)})


def organization_resolver(settings: Settings,
                          source_organization: Callable[[str], str | None] | None = None,
                          source_metadata: Callable[[str], dict[str, Any]] | None = None
                          ) -> Any:
    """Orthanc's metadata of an instance → its organization.

    A copy Orthanc made of another instance (anonymize, modify: its metadata has
    ``AnonymizedFrom`` or ``ModifiedFrom``, the source's Orthanc id) belongs to its
    source's organization: ``source_organization`` looks the source up in the
    mirror; a source not mirrored yet is resolved from its own Orthanc metadata
    (``source_metadata``). Anything else: the calling AE title's mapping for DICOM,
    the default organization otherwise. A failed look-up raises, so that the
    mirror retries rather than file a copy in the wrong organization.
    """

    def resolve(metadata: dict[str, Any], depth: int = 0) -> str:
        source = metadata.get("AnonymizedFrom") or metadata.get("ModifiedFrom")
        if source and depth < 8:
            named = source_organization(str(source)) if source_organization else None
            if named:
                return named
            if source_metadata is not None:
                try:
                    return resolve(source_metadata(str(source)), depth + 1)
                except OrthancError as exc:
                    if exc.status != 404:
                        raise
                    log.warning("mirror.source_gone source=%s; organization from the copy's "
                                "own metadata", source)
        if metadata.get("Origin") == "DicomProtocol":
            return settings.organization_for_aet(metadata.get("RemoteAET"))
        return settings.default_organization

    return resolve


def dicom_network(settings: Settings, pool: Any) -> DicomNetwork:
    """C-FIND/C-MOVE for DICOM peers. Moves store through Orthanc's REST API on
    loopback with a long timeout: a synchronous store of a large study takes minutes."""
    store = HttpOrthancApi(settings.orthanc_url, timeout=3600,
                           headers={INTERNAL_HEADER: internal_secret(settings.data_dir)})
    policy = AetPolicy(settings.aet_organizations, settings.default_organization,
                       settings.dicom_unmapped_aet)
    return DicomNetwork(pool.connection, policy, store, settings.orthanc_aet)


MIRROR_FETCH_WORKERS = 4
SIGNAL_CACHE_BYTES = 128 * 1024 * 1024  # about 1,400 decoded 4 s windows of a 12-lead 500 Hz ECG


def build_mirror(settings: Settings, pool: Any, reader: HttpOrthancApi | None = None,
                 fetch_workers: int = MIRROR_FETCH_WORKERS,
                 store: ObjectStore | None = None) -> Mirror:
    """The mirror as Atrium runs it, inside Orthanc or from the ``atrium`` command.

    It reads Orthanc over loopback HTTP, not through the SDK: the plugin holds the
    GIL for the whole of an SDK call, so SDK reads run one at a time and stall every
    other Python callback, while HTTP reads from a few threads run in Orthanc's own
    threads, in parallel. Every file it has Orthanc parse passes the instance guard
    first (:mod:`atrium.mirror.quarantine`).
    """
    reader = reader or orthanc_client(settings)
    index = OrthancIndex(settings.orthanc_index_url) if settings.orthanc_index_url else None
    resolver = organization_resolver(
        settings, SourceOrganizations(pool.connection),
        lambda source: reader.get_json(f"/instances/{source}/metadata?expand"))
    quarantine = Quarantine(reader, lambda orthanc_id: reader.stream(
        f"/instances/{orthanc_id}/file"), pool.connection, store or open_settings_store(settings),
        resolver)
    guard = InstanceGuard(quarantine, ParseMemory(settings.data_dir / "mirror" / "parsing"),
                          dicom_limits(settings))
    return Mirror(reader, MirrorWriter(pool.connection), resolver,
                  batch_size=settings.mirror_batch_size, fetch_workers=fetch_workers,
                  index=index, guard=guard)


def dicom_limits(settings: Settings) -> DicomLimits:
    """What a DICOM file may hold before Atrium lets a parser see it."""
    return DicomLimits(max_depth=settings.dicom_max_depth)


def dicom_frames(api: OrthancApi) -> FrameReader:
    """Frames of DICOM slides as Orthanc stores them (a JPEG frame is its JPEG
    stream). A frame Orthanc no longer has is NotFound, any other failure
    ServiceUnavailable: neither is the "damaged file" a slide reader reports."""

    def frame(orthanc_id: str, index: int) -> bytes:
        try:
            return api.get_bytes(f"/instances/{orthanc_id}/frames/{index}/raw")
        except OrthancError as error:
            if error.status == 404:
                raise NotFound("an image of this slide is no longer in Orthanc") from error
            raise ServiceUnavailable("Orthanc cannot be read; try again") from error

    return frame


def dicom_slides(pool: Any, api: OrthancApi) -> Callable[[uuid.UUID], SlideReader]:
    """Opens the reader of a DICOM WSI slide from its row's metadata."""
    frames = dicom_frames(api)

    def open_slide(slide_id: uuid.UUID) -> SlideReader:
        with pool.connection() as conn:
            row = conn.execute("SELECT metadata FROM slides WHERE id = %s AND file_format = "
                               "'DICOM' AND deleted_at IS NULL", (slide_id,)).fetchone()
        if row is None:
            raise NotFound(f"No slide {slide_id}")
        return open_dicom_slide(row[0], frames)

    return open_slide


def upload_limits(settings: Settings) -> UploadLimits:
    """What a resumable upload may be."""
    return UploadLimits(max_bytes=settings.upload_max_bytes,
                        expiry=dt.timedelta(hours=settings.upload_expiry_hours))


def open_settings_store(settings: Settings) -> ObjectStore:
    """The object store the settings name."""
    return open_store(settings.storage_url, s3_endpoint=settings.s3_endpoint,
                      s3_access_key=settings.s3_access_key,
                      s3_secret_key=settings.s3_secret_key, s3_secure=settings.s3_secure)


def organization_id_of(pool: Any, name: str) -> Callable[[], Any]:
    """The id of the organization ``name``, looked up once it exists."""
    found: list[Any] = []

    def lookup() -> Any:
        if not found:
            with pool.connection() as conn:
                row = conn.execute("SELECT id FROM organizations WHERE name = %s",
                                   (name,)).fetchone()
            if row is None:
                return None
            found.append(row[0])
        return found[0]

    return lookup


def grant_runtime_role(settings: Settings, pool: Any) -> None:
    """When Atrium runs as a role other than the schema's owner, give that role what
    it needs on every table — and nothing that changes audit rows
    (``atrium_grant_app_role()``, sql/0007)."""
    if settings.owner_url == settings.database_url:
        return
    with pool.connection() as conn:
        row = conn.execute("SELECT current_user").fetchone()
    runtime = row[0] if row else None
    with psycopg.connect(settings.owner_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT atrium_grant_app_role(%s)", (runtime,))


def maintain(owner_url: str) -> None:
    """Monthly partitions ahead for every partitioned table, as the schema's owner,
    who alone may create them, under the maintenance lock (atrium.operations).
    Retention runs on its own schedule (:func:`operations_tasks`)."""
    upkeep(owner_url)


def retention_metrics(metrics: Metrics) -> Callable[[RunReport], None]:
    """Counts one retention run per kind of data in ``metrics``."""

    def record(report: RunReport) -> None:
        plan = report.plan
        metrics.record_retention_run("audit", plan.audit_rows if report.audit_partitions_dropped
                                     else 0)
        metrics.record_retention_run("predictions", report.predictions_archived)
        metrics.record_retention_run("jobs", report.jobs_deleted)
        metrics.record_retention_run(
            "deleted", sum(len(ids) for ids in report.deleted_purged.values()))

    return record


def operations_tasks(app: Atrium, ready: Callable[[], bool]
                     ) -> tuple[ScheduledTask, ScheduledTask | None]:
    """Partition upkeep and retention every ``maintenance_seconds``; a checkpoint of
    the audit chain every ``audit_anchor_seconds`` (unless 0) and at shutdown."""
    settings = app.settings
    anchorer = operations.anchorer(settings, app.pool.connection)
    upkeep_task = ScheduledTask(
        "upkeep", operations.maintenance(settings, app.store, anchorer,
                                         retention_metrics(app.metrics)),
        every_seconds=settings.maintenance_seconds, ready=ready)
    if not settings.audit_anchor_seconds:
        return upkeep_task, None

    def anchor() -> None:
        anchorer.publish_public_key()
        anchorer.anchor()

    return upkeep_task, ScheduledTask("audit-anchor", anchor,
                                      every_seconds=settings.audit_anchor_seconds,
                                      ready=ready, at_stop=anchorer.anchor)


_ROUTE_MODULES = (health, mirror_status, metrics_routes, openapi, me, organizations, users,
                  patients, studies, jobs, instances, audit, audit_export, models, predictions,
                  annotation_routes, annotation_reports, slide_annotation_reports, uploads,
                  slides, recordings, slide_viewer, viewer)


def api_routes(app: Any) -> list[Route]:
    """Every route of Atrium's API, in the order the OpenAPI document lists them.
    Declaring them reads only ``app.settings`` (and ``app.slides``, ``app.bus``):
    handlers use the rest of ``app`` when called."""
    return [route for module in _ROUTE_MODULES for route in module.routes(app)]


@dataclass
class Atrium:
    settings: Settings
    orthanc: OrthancApi
    pool: Any
    store: ObjectStore
    mirror: Mirror
    worker: MirrorWorker
    router: Router
    api: AuditedApi
    request_filter: RequestFilter
    dicomweb: DicomWebGateway
    orthanc_http: HttpOrthancApi  # loopback HTTP with Atrium's internal credential
    deidentifier: jobs.Deidentifier  # de-identification jobs, resumed after a restart
    uploads: UploadStore  # resumable uploads (/api/uploads), claimed by slides
    identities: Identities | None = None  # who the tokens are (cached); see auth.guard
    sr_importer: SrImporter | None = None  # DICOM SRs arriving in Orthanc → annotations
    wsi_registry: WsiRegistry | None = None  # DICOM WSI series in Orthanc → slides
    ann_importer: AnnImporter | None = None  # DICOM bulk annotations in Orthanc → slides
    waveform_registry: WaveformRegistry | None = None  # DICOM waveforms in Orthanc → recordings
    slides: SlideLibrary | None = None  # open slide readers and tiles (api.slides)
    # Decoded signal segments by (recording, block, window): immutable, so never stale.
    signal_segments: ByteLru[Hashable, Any] = field(
        default_factory=lambda: ByteLru(SIGNAL_CACHE_BYTES))
    dicom: DicomNetwork | None = None  # C-FIND/C-MOVE scoped per organization; C-GET refused
    # What a DICOM file may hold before any parser sees it (atrium.dicom.scan).
    dicom_limits: DicomLimits = DEFAULT_LIMITS
    viewer_site: OhifSite | None = None  # OHIF at /viewer/ (api.viewer)
    # Prometheus metrics in a registry of this application's own (GET /api/metrics).
    metrics: Metrics = field(default_factory=Metrics)
    upkeep: ScheduledTask | None = None  # partitions ahead and retention (atrium.operations)
    audit_anchor: ScheduledTask | None = None  # signed checkpoints of the audit chain
    # Messages between the nodes sharing the database: cache invalidation, the
    # mirror's cue (atrium.cluster.bus); None only in tests that build parts.
    bus: ClusterBus | None = None
    job_recovery: ScheduledTask | None = None  # jobs of a node that died, taken over
    memtrace: MemoryTrace | None = None  # ATRIUM_TRACEMALLOC_SECONDS: a diagnostic, off

    @classmethod
    def build(cls, settings: Settings, orthanc: OrthancApi) -> Atrium:
        pool = open_pool(settings.database_url)
        store = open_settings_store(settings)
        reader = orthanc_client(settings)
        mirror = build_mirror(settings, pool, reader, store=store)
        runner = Runner.for_node(settings.orthanc_http_port,
                                 beat_seconds=settings.job_heartbeat_seconds)
        deidentifier = jobs.Deidentifier(pool.connection, lambda: reader, runner)
        upload_store = UploadStore(pool.connection, store, upload_limits(settings))
        # Several nodes on one database: one leads the mirror, all hear of changes
        # that their caches must not miss (docs/SCALING.md).
        leadership = Leadership(settings.database_url, runner.node)
        bus = ClusterBus(settings.database_url, runner.node)

        def recover_jobs() -> None:
            """Jobs orphaned by a crash or restart, here or on a node that died:
            de-identification resumes, platform jobs fail with advice (atrium.jobs)."""
            recover_orphans(pool.connection, runner, {"deidentify": deidentifier.resume},
                            advice=INTERRUPTED_ADVICE, stale_seconds=settings.job_stale_seconds)

        def prepare() -> None:
            apply_migrations(settings.owner_url)
            grant_runtime_role(settings, pool)
            if isinstance(store, S3ObjectStore):
                store.ensure_bucket()
            with pool.connection() as conn:
                conn.execute("INSERT INTO organizations (name) VALUES (%s) "
                             "ON CONFLICT (name) DO NOTHING", (settings.default_organization,))
            maintain(settings.owner_url)
            if mirror.guard is not None:
                mirror.guard.recover(mirror.file_tags)
            recover_jobs()
            upload_store.expire()

        def lead() -> None:
            """What the node that begins leading the mirror does first."""
            if needs_backfill(mirror):
                log.info("mirror.backfill reason=first start over a non-empty Orthanc")
                backfill(mirror, pool.connection, runner=runner)

        def full_check() -> None:
            maintain(settings.owner_url)
            upload_store.expire()
            report = compare(reader, pool.connection)
            if not report.clean:
                log.warning("mirror.full_check differences=%d", len(report.differences))
                repair(report, mirror)

        def announce(event: str) -> None:
            try:
                with pool.connection() as conn:
                    publish(conn, "mirror", event)
            except Exception as exc:  # noqa: BLE001 - the leader's poll covers a lost cue
                log.warning("bus.publish_failed topic=mirror error=%r", exc)

        worker = MirrorWorker(mirror, prepare=prepare, full_check=full_check,
                              poll_seconds=settings.mirror_poll_seconds,
                              full_check_seconds=settings.mirror_full_check_seconds,
                              leadership=leadership, on_lead=lead, announce=announce)
        bus.subscribe("mirror", lambda event: (worker.notify_elsewhere() if event == "stored"
                                               else mirror.forget_headers()),
                      resync=mirror.forget_headers)
        identities = Identities(pool.connection)
        bus.subscribe("identities", lambda _: identities.forget(), resync=identities.forget)
        guard = AuthGuard(validator_for(settings).validate, identities)
        secret = internal_secret(settings.data_dir)
        plugin_root = settings.dicomweb_plugin_root
        forwarder = PluginForwarder(settings.orthanc_url, plugin_root, {INTERNAL_HEADER: secret})
        metrics = Metrics()  # the gateway counts its requests in it too
        app = cls(settings, orthanc, pool, store, mirror, worker, Router([]),
                  AuditedApi(Router([]), pool.connection),
                  RequestFilter(guard, secret, pool.connection,
                                dicomweb_root=PUBLIC_DICOMWEB_ROOT, plugin_root=plugin_root,
                                gateway_enabled=True,
                                operators=organization_id_of(pool, settings.default_organization),
                                proxies=settings.trusted_proxies),
                  DicomWebGateway(guard, pool.connection, forwarder,
                                  public_root=PUBLIC_DICOMWEB_ROOT, plugin_root=plugin_root,
                                  limits=dicom_limits(settings), observe=metrics.observe_request),
                  reader, deidentifier, upload_store, identities, metrics=metrics, bus=bus)
        app.slides = SlideLibrary(store, open_dicom=dicom_slides(pool, reader))
        app.router = Router(api_routes(app),
                            guard=metrics_routes.scrape_token_guard(guard, settings.metrics_token))
        app.api = AuditedApi(app.router, pool.connection, observe=app.metrics.observe_request)
        app.viewer_site = viewer.ohif_site(settings)
        app.metrics.watch(StateCollector(
            pool.connection, lambda: int(orthanc.get_json("/changes?last").get("Last", 0)),
            worker))
        app.upkeep, app.audit_anchor = operations_tasks(app, lambda: worker.prepared)
        app.job_recovery = ScheduledTask("job-recovery", recover_jobs,
                                         every_seconds=settings.job_stale_seconds / 3,
                                         ready=lambda: worker.prepared)
        app.dicom = dicom_network(settings, pool)
        app.dicom_limits = dicom_limits(settings)
        app.sr_importer = SrImporter(
            pool.connection, lambda orthanc_id: reader.get_bytes(f"/instances/{orthanc_id}/file"),
            ready=lambda: worker.prepared)
        app.wsi_registry = WsiRegistry(
            pool.connection, lambda orthanc_id: reader.get_json(
                f"/instances/{orthanc_id}/tags?simplify"), ready=lambda: worker.prepared,
            changed=app.slides.forget)
        app.ann_importer = AnnImporter(
            pool.connection, lambda orthanc_id: reader.get_bytes(f"/instances/{orthanc_id}/file"),
            ready=lambda: worker.prepared)
        app.waveform_registry = WaveformRegistry(
            pool.connection, lambda orthanc_id: reader.get_bytes(f"/instances/{orthanc_id}/file"),
            ready=lambda: worker.prepared, limits=app.dicom_limits)
        # Work that must run once in a cluster runs on the mirror's leader; a standby
        # takes it over with the lead (docs/SCALING.md).
        for once in (app.upkeep, app.audit_anchor, app.sr_importer, app.wsi_registry,
                     app.ann_importer, app.waveform_registry):
            if once is not None:
                once.only_while(lambda: worker.leading)
        return app

    def start(self) -> None:
        # Off the caller's thread: from numba's cache in half a second, but about
        # 7 s of CPU on a fresh install, which the first signal request would wait for.
        threading.Thread(target=_compile_codec, name="atrium-codec-warm", daemon=True).start()
        if self.memtrace is None and self.settings.tracemalloc_seconds > 0:
            self.memtrace = MemoryTrace(self.settings.data_dir / "tracemalloc.txt",
                                        self.settings.tracemalloc_seconds)
            self.memtrace.start()
        if self.bus is not None:
            self.bus.start()
        self.worker.start()
        for task in (self.upkeep, self.audit_anchor, self.job_recovery):
            if task is not None:
                task.start()
        if self.dicom is not None:
            self.dicom.start()
        if self.sr_importer is not None:
            self.sr_importer.start()
        if self.wsi_registry is not None:
            self.wsi_registry.start()
        if self.ann_importer is not None:
            self.ann_importer.start()
        if self.waveform_registry is not None:
            self.waveform_registry.start()

    def stop(self) -> None:
        if self.sr_importer is not None:
            self.sr_importer.stop()
        if self.wsi_registry is not None:
            self.wsi_registry.stop()
        if self.ann_importer is not None:
            self.ann_importer.stop()
        if self.waveform_registry is not None:
            self.waveform_registry.stop()
        for task in (self.upkeep, self.audit_anchor, self.job_recovery):
            if task is not None:
                task.stop()  # the anchor's last checkpoint, at shutdown
        self.worker.stop()  # gives the lead up: a standby takes over at once
        if self.bus is not None:
            self.bus.stop()
        self.pool.close()
        if self.memtrace is not None:
            self.memtrace.stop()
