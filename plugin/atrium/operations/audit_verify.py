"""``atrium audit verify``: the hash chain walked whole, then held against the
signed checkpoints outside the database (:mod:`atrium.operations.anchoring`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from atrium.auth.audit import VerifyResult, verify_chain
from atrium.operations.anchoring import DEFAULT_PREFIX, AnchorReport, verify_anchors
from atrium.storage import ObjectStore

__all__ = ["AuditVerdict", "verify_audit"]


@dataclass(frozen=True)
class AuditVerdict:
    chain: VerifyResult
    anchors: AnchorReport | None  # None: no key to check checkpoints with

    @property
    def ok(self) -> bool:
        return self.chain.ok and (self.anchors is None or self.anchors.ok)

    def describe(self) -> str:
        anchors = ("checkpoints NOT checked: no anchoring key" if self.anchors is None
                   else self.anchors.describe())
        return f"{self.chain.describe()}\n{anchors}"

    def as_json(self) -> dict[str, Any]:
        return {**self.chain.as_json(), "ok": self.ok,
                "anchors": self.anchors.as_json() if self.anchors is not None else None}


def verify_audit(conn: psycopg.Connection[Any], store: ObjectStore,
                 public_key: Ed25519PublicKey | None, *, prefix: str = DEFAULT_PREFIX,
                 retention: dt.timedelta = dt.timedelta(days=7 * 365),
                 now: dt.datetime | None = None) -> AuditVerdict:
    """The chain (rows missing only where retention dropped months at least
    ``retention`` old, seen from ``now``) and every checkpoint. ``conn``: autocommit,
    outside a transaction. ``now`` defaults to the database's clock; a later ``now``
    (a test moving the clock) shortens the age a dropped month must have had."""
    min_retention = retention
    if now is not None:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        min_retention = retention - (now - row[0])
    chain = verify_chain(conn, min_retention=min_retention)
    anchors = None if public_key is None else verify_anchors(conn, store, public_key, prefix)
    return AuditVerdict(chain, anchors)
