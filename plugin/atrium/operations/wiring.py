"""Operations built from the settings: what ``app.py`` starts and ``cli.py`` runs."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atrium.operations.anchoring import Anchorer, Connect, load_or_create_key
from atrium.operations.partitions import upkeep
from atrium.operations.retention import RetentionPolicy, RunReport, run
from atrium.settings import Settings
from atrium.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

__all__ = ["anchor_key_path", "anchor_store", "anchorer", "maintenance", "retention_policy"]

ANCHOR_KEY_NAME = "audit-anchor-ed25519.pem"


def anchor_key_path(settings: Settings) -> Path:
    return settings.audit_anchor_key or settings.data_dir / "keys" / ANCHOR_KEY_NAME


def anchor_store(settings: Settings) -> ObjectStore:
    """Where checkpoints go: ``ATRIUM_AUDIT_ANCHOR_URL``, else the object store."""
    return open_store(settings.audit_anchor_url or settings.storage_url,
                      s3_endpoint=settings.s3_endpoint, s3_access_key=settings.s3_access_key,
                      s3_secret_key=settings.s3_secret_key, s3_secure=settings.s3_secure)


def anchorer(settings: Settings, connect: Connect, store: ObjectStore | None = None
             ) -> Anchorer:
    """The anchorer of this node; creates the signing key on first use."""
    node = f"{socket.gethostname()}-{settings.orthanc_http_port}"
    return Anchorer(connect, store or anchor_store(settings),
                    load_or_create_key(anchor_key_path(settings)), node=node)


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy.from_days(settings.retention_audit_days,
                                     settings.retention_predictions_days,
                                     settings.retention_jobs_days,
                                     settings.retention_deleted_days)


def maintenance(settings: Settings, store: ObjectStore, audit_anchorer: Anchorer,
                on_retention: Callable[[RunReport], Any] | None = None
                ) -> Callable[[], None]:
    """One scheduled upkeep: partitions ahead, then retention when it is automatic."""

    def task(now: dt.datetime | None = None) -> None:
        upkeep(settings.owner_url, now)
        if settings.retention_automatic:
            report = run(settings.owner_url, retention_policy(settings), store, audit_anchorer,
                         now)
            if on_retention is not None:
                on_retention(report)

    return task
