"""Comparing Orthanc with the mirror (``atrium verify``) and repairing the
differences (``atrium reconcile``, and the worker's periodic full check).

The comparison reads Orthanc's resource lists page by page (expanded series and
studies carry their children, so counts are checked without one call per
resource) and the mirror's live rows in one query per level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from atrium.mirror.sync import LEVEL_PATHS, Mirror
from atrium.orthanc_api import OrthancApi

log = logging.getLogger(__name__)

__all__ = ["Difference", "Report", "compare", "repair"]

PAGE = 1000

_LIVE_IDS = {
    "Patient": "SELECT DISTINCT orthanc_id FROM patients WHERE deleted_at IS NULL "
               "AND orthanc_id IS NOT NULL AND EXISTS (SELECT 1 FROM studies s WHERE "
               "s.patient_id = patients.id AND s.deleted_at IS NULL)",
    "Study": "SELECT orthanc_id FROM studies WHERE deleted_at IS NULL",
    "Series": "SELECT orthanc_id FROM series WHERE deleted_at IS NULL",
    "Instance": "SELECT orthanc_id FROM instances WHERE deleted_at IS NULL",
}

_SERIES_COUNTS = "SELECT orthanc_id, number_of_instances FROM series WHERE deleted_at IS NULL"
_STUDY_COUNTS = """
SELECT st.orthanc_id, st.number_of_series, st.number_of_instances, st.storage_size_bytes,
       COALESCE((SELECT sum(i.file_size_bytes) FROM series se JOIN instances i
                 ON i.series_id = se.id WHERE se.study_id = st.id AND se.deleted_at IS NULL
                 AND i.deleted_at IS NULL), 0)
FROM studies st WHERE st.deleted_at IS NULL
"""


@dataclass(frozen=True)
class Difference:
    """One way the mirror differs from Orthanc."""

    kind: str  # 'missing' (in Orthanc, not mirrored), 'extra' (mirrored, gone), 'count'
    level: str
    orthanc_id: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind:8} {self.level:8} {self.orthanc_id}"
        return f"{text}  {self.detail}" if self.detail else text


@dataclass
class Report:
    differences: list[Difference] = field(default_factory=list)
    orthanc_counts: dict[str, int] = field(default_factory=dict)
    mirror_counts: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.differences


def _pages(api: OrthancApi, level: str, expand: bool) -> Iterator[Any]:
    since = 0
    while True:
        suffix = "&expand" if expand else ""
        page = api.get_json(f"/{LEVEL_PATHS[level]}?since={since}&limit={PAGE}{suffix}")
        yield from page
        if len(page) < PAGE:
            return
        since += PAGE


def compare(api: OrthancApi, connect: Callable[[], Any],
            progress: Callable[[str], None] | None = None) -> Report:
    """Every difference between Orthanc and the mirror."""
    report = Report()
    orthanc_ids: dict[str, set[str]] = {}
    series_children: dict[str, int] = {}
    study_series: dict[str, list[str]] = {}

    for level in ("Patient", "Study", "Series", "Instance"):
        if progress:
            progress(f"reading Orthanc's {LEVEL_PATHS[level]}")
        if level == "Series":
            expanded = list(_pages(api, level, True))
            orthanc_ids[level] = {s["ID"] for s in expanded}
            series_children = {s["ID"]: len(s.get("Instances", [])) for s in expanded}
        elif level == "Study":
            expanded = list(_pages(api, level, True))
            orthanc_ids[level] = {s["ID"] for s in expanded}
            study_series = {s["ID"]: list(s.get("Series", [])) for s in expanded}
        else:
            orthanc_ids[level] = set(_pages(api, level, False))

    with connect() as conn:
        mirror_ids = {level: {row[0] for row in conn.execute(sql).fetchall()}
                      for level, sql in _LIVE_IDS.items()}
        series_counts = dict(conn.execute(_SERIES_COUNTS).fetchall())
        study_rows = conn.execute(_STUDY_COUNTS).fetchall()

    for level in ("Patient", "Study", "Series", "Instance"):
        theirs, ours = orthanc_ids[level], mirror_ids[level]
        report.orthanc_counts[level] = len(theirs)
        report.mirror_counts[level] = len(ours)
        report.differences += [Difference("missing", level, i) for i in sorted(theirs - ours)]
        report.differences += [Difference("extra", level, i) for i in sorted(ours - theirs)]

    for series_id, expected in series_children.items():
        actual = series_counts.get(series_id)
        if actual is not None and actual != expected:
            report.differences.append(Difference(
                "count", "Series", series_id, f"instances: Orthanc {expected}, mirror {actual}"))
    for study_id, n_series, n_instances, size, child_size in study_rows:
        if study_id not in study_series:
            continue  # reported as 'extra' above
        children = study_series[study_id]
        want_series = len(children)
        want_instances = sum(series_children.get(s, 0) for s in children)
        if (want_series, want_instances) != (n_series, n_instances):
            report.differences.append(Difference(
                "count", "Study", study_id,
                f"series/instances: Orthanc {want_series}/{want_instances}, "
                f"mirror {n_series}/{n_instances}"))
        elif size != child_size:
            report.differences.append(Difference(
                "count", "Study", study_id,
                f"storage_size_bytes {size} != sum of its instances {child_size}"))
    return report


def repair(report: Report, mirror: Mirror) -> int:
    """Repair every difference of ``report``; returns how many were acted on."""
    missing = [d.orthanc_id for d in report.differences
               if d.kind == "missing" and d.level == "Instance"]
    extra = [(d.level, d.orthanc_id) for d in report.differences if d.kind == "extra"]
    recount_series = [d.orthanc_id for d in report.differences if d.kind == "count"]
    if missing:
        mirror.ingest(missing)
    if extra:
        mirror.apply_deletions(extra)
    if recount_series:
        mirror.writer.recount_by_orthanc_ids(recount_series)
    # Missing patients/studies/series are repaired through their instances.
    return len(missing) + len(extra) + len(recount_series)
