"""Facts about instances read straight from Orthanc's PostgreSQL index.

For each instance the mirror needs its tags, its size and its Orthanc metadata
(calling AE title, origin). Orthanc's index database holds the size, the metadata
and each resource's *main* DICOM tags (the ones Orthanc indexes: SOPInstanceUID,
InstanceNumber...); when that database is PostgreSQL, one query per batch gives
them for hundreds of instances at once, where the REST API needs three calls per
instance and a parse of the file — the difference between a mirror that takes a
share of Orthanc's CPU during a burst of stores and one that takes almost none.

Only the tables that every version of Orthanc's PostgreSQL index has carried
(``Resources``, ``AttachedFiles``, ``Metadata``, ``MainDicomTags``) are read,
read-only. Any failure makes the caller fall back to Orthanc's REST API for that
batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pydicom.datadict import keyword_for_tag

log = logging.getLogger(__name__)

__all__ = ["InstanceFacts", "OrthancIndex"]

# Orthanc's MetadataType numbers, named as its REST API names them.
METADATA_NAMES = {
    1: "IndexInSeries", 2: "ReceptionDate", 3: "RemoteAET", 4: "ExpectedNumberOfInstances",
    5: "ModifiedFrom", 6: "AnonymizedFrom", 7: "LastUpdate", 8: "Origin",
    9: "TransferSyntax", 10: "SopClassUid", 11: "RemoteIP", 12: "CalledAET",
    13: "HttpUsername", 14: "PixelDataOffset", 15: "PixelDataVR",
}
_DICOM_ATTACHMENT = 1
_INSTANCE = 3

# Main tags are keyed by (group << 16 | element). Orthanc leaves out of this table
# the values it could not index (over 256 bytes, binary): absent here does not
# mean absent from the file.
_FACTS = """
SELECT r.publicid, s.publicid,
       (SELECT af.uncompressedsize FROM attachedfiles af
        WHERE af.id = r.internalid AND af.filetype = %(dicom)s),
       COALESCE((SELECT json_object_agg(m.type, m.value) FROM metadata m
                 WHERE m.id = r.internalid), '{}'::json),
       COALESCE((SELECT json_object_agg(t.taggroup * 65536 + t.tagelement, t.value)
                 FROM maindicomtags t WHERE t.id = r.internalid), '{}'::json)
FROM resources r JOIN resources s ON s.internalid = r.parentid
WHERE r.resourcetype = %(instance)s AND r.publicid = ANY(%(ids)s::text[])
"""


@dataclass(frozen=True)
class InstanceFacts:
    file_size: int
    metadata: dict[str, str]
    series_id: str = ""  # Orthanc's id of the parent series
    main_tags: dict[str, str] = field(default_factory=dict)  # instance level, by keyword


def _named(metadata: Mapping[str, str]) -> dict[str, str]:
    named = {}
    for key, value in metadata.items():
        number = int(key)
        named[METADATA_NAMES.get(number, f"Metadata{number}")] = value
    return named


def _keywords(tags: Mapping[str, str]) -> dict[str, str]:
    """{"2097171": "3"} -> {"InstanceNumber": "3"}; private and unknown tags keep
    Orthanc's ``gggg,eeee`` form."""
    named = {}
    for key, value in tags.items():
        number = int(key)
        named[keyword_for_tag(number) or f"{number >> 16:04x},{number & 0xFFFF:04x}"] = value
    return named


class OrthancIndex:
    """Read-only access to Orthanc's PostgreSQL index; one connection, reused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def instance_facts(self, instance_ids: Sequence[str]) -> dict[str, InstanceFacts]:
        """Size, metadata, series and main tags of each instance Orthanc still holds;
        an id absent from the answer has been deleted."""
        with self._lock:
            try:
                conn = self._connection()
                rows = conn.execute(_FACTS, {"ids": list(instance_ids), "dicom": _DICOM_ATTACHMENT,
                                             "instance": _INSTANCE}).fetchall()
            except psycopg.Error:
                self.close()
                raise
        return {public_id: InstanceFacts(int(size or 0), _named(metadata), series_id,
                                         _keywords(tags))
                for public_id, series_id, size, metadata, tags in rows}

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=5, application_name="atrium-mirror",
                options="-c default_transaction_read_only=on")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
