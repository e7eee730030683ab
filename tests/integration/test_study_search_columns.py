"""The study columns a search filters on (sql/0022_study_search_columns.sql): a
study's modalities and its patient's de-identified and deleted flags, derived by
the database on every write, stay right through the mirror and the patients API —
and the search finds exactly the studies the rule it replaces would find.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import psycopg
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_instance, make_study

pytestmark = pytest.mark.integration

# Every study whose derived columns differ from what they derive from: none, ever.
_DRIFTED = """
SELECT s.id FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.deidentified IS DISTINCT FROM p.is_deidentified
   OR s.patient_deleted IS DISTINCT FROM (p.deleted_at IS NOT NULL)
   OR s.modalities IS DISTINCT FROM (
        SELECT COALESCE(array_agg(m ORDER BY m), '{}') FROM (
            SELECT NULLIF(s.modality, '') AS m
            UNION SELECT NULLIF(se.modality, '') FROM series se
                  WHERE se.study_id = s.id AND se.deleted_at IS NULL) x
        WHERE m IS NOT NULL)
"""

# The search's conditions before 0022, for comparison: the patient joined, the
# series probed.
_BEFORE = """
SELECT s.id FROM studies s JOIN patients p ON p.id = s.patient_id
JOIN organizations o ON o.id = s.organization_id
WHERE o.name = 'Default' AND s.deleted_at IS NULL AND p.deleted_at IS NULL
  AND (%(phi)s OR p.is_deidentified)
  AND (s.modality = %(modality)s OR EXISTS (
        SELECT 1 FROM series m WHERE m.study_id = s.id AND m.deleted_at IS NULL
        AND m.modality = %(modality)s))
"""


def _get(atrium: AtriumUnderTest, role: str, path: str, **params: Any) -> requests.Response:
    return requests.get(atrium.url + path, params=params, headers=atrium.auth(role),
                        timeout=30)


def _found(atrium: AtriumUnderTest, role: str, **params: Any) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        answer = _get(atrium, role, "/api/studies", limit=1000, **params,
                      **({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found |= {item["id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def _store(atrium: AtriumUnderTest, blobs: list[bytes]) -> None:
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    atrium.wait_mirrored([str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in blobs])


def _columns(atrium: AtriumUnderTest, study_id: str) -> tuple[list[str], bool, bool]:
    row = atrium.sql("SELECT modalities, deidentified, patient_deleted FROM studies "
                     "WHERE id = %s", (study_id,))[0]
    return list(row[0]), bool(row[1]), bool(row[2])


def _no_drift(atrium: AtriumUnderTest) -> None:
    assert atrium.sql(_DRIFTED) == []


def test_a_study_gains_and_loses_a_modality_with_its_series(atrium: AtriumUnderTest) -> None:
    modality = f"Z{uuid.uuid4().hex[:6].upper()}"  # a modality of this test only
    spec = StudySpec(patient_id=f"SC-{uuid.uuid4().hex[:10]}", modality="CT", series=1,
                     instances_per_series=1)
    _store(atrium, make_study(spec))
    study_id = str(atrium.scalar("SELECT id FROM studies WHERE study_instance_uid = %s",
                                 (spec.study_uid,)))
    assert _columns(atrium, study_id)[0] == ["CT"]
    assert study_id not in _found(atrium, "clinician", modality=modality)

    series_uid = generate_uid()
    _store(atrium, [make_instance(spec, series_uid, 2, 1, Modality=modality)])
    assert _columns(atrium, study_id)[0] == sorted(["CT", modality])
    assert _found(atrium, "clinician", modality=modality) == {study_id}
    assert study_id in _found(atrium, "clinician", modality="CT")
    _no_drift(atrium)

    orthanc_id = atrium.scalar("SELECT orthanc_id FROM series WHERE series_instance_uid = %s",
                               (series_uid,))
    assert requests.delete(f"{atrium.url}/series/{orthanc_id}", timeout=30,
                           headers=atrium.internal_headers).status_code == 200
    wait_until(lambda: atrium.scalar(
        "SELECT deleted_at IS NOT NULL FROM series WHERE series_instance_uid = %s",
        (series_uid,)), 30, what="the series deleted in the mirror")
    assert _columns(atrium, study_id)[0] == ["CT"]
    assert _found(atrium, "clinician", modality=modality) == set()
    # The study's own modality stays a modality of the study, as it always matched.
    assert study_id in _found(atrium, "clinician", modality="CT")
    _no_drift(atrium)


def test_de_identified_follows_the_patient(atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id=f"SC-{uuid.uuid4().hex[:10]}", series=1,
                     instances_per_series=1)
    _store(atrium, make_study(spec))
    study_id, patient_id = map(str, atrium.sql(
        "SELECT id, patient_id FROM studies WHERE study_instance_uid = %s",
        (spec.study_uid,))[0])
    assert _columns(atrium, study_id) == (["CT"], False, False)
    assert study_id not in _found(atrium, "researcher", patient_id=patient_id)

    def arrives(deidentified: bool) -> None:
        """Another study of the same patient, with or without PatientIdentityRemoved:
        the mirror sets the patient's flag from it, and so the first study's."""
        other = StudySpec(patient_id=spec.patient_id, deidentified=deidentified, series=1,
                          instances_per_series=1)
        _store(atrium, make_study(other))

    arrives(deidentified=True)
    assert _columns(atrium, study_id)[1] is True
    assert study_id in _found(atrium, "researcher", patient_id=patient_id)
    item = next(i for i in _get(atrium, "researcher", "/api/studies",
                                patient_id=patient_id).json()["items"] if i["id"] == study_id)
    assert item["patient_is_deidentified"] is True
    arrives(deidentified=False)
    assert _columns(atrium, study_id)[1] is False
    assert _found(atrium, "researcher", patient_id=patient_id) == set()
    assert study_id in _found(atrium, "clinician", patient_id=patient_id)
    _no_drift(atrium)


def test_a_study_under_a_deleted_patient_is_found_by_no_one(atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id=f"SC-{uuid.uuid4().hex[:10]}", series=1,
                     instances_per_series=1)
    _store(atrium, make_study(spec))
    study_id, patient_id = map(str, atrium.sql(
        "SELECT id, patient_id FROM studies WHERE study_instance_uid = %s",
        (spec.study_uid,))[0])
    # Not a state the mirror or the API leaves (a patient with live studies cannot be
    # deleted), but the scope's rule holds whatever wrote it.
    atrium.sql("UPDATE patients SET deleted_at = now() WHERE id = %s RETURNING id",
               (patient_id,))
    try:
        assert _columns(atrium, study_id)[2] is True
        assert _found(atrium, "clinician", patient_id=patient_id) == set()
    finally:
        atrium.sql("UPDATE patients SET deleted_at = NULL WHERE id = %s RETURNING id",
                   (patient_id,))
    assert _columns(atrium, study_id)[2] is False
    assert _found(atrium, "clinician", patient_id=patient_id) == {study_id}


@pytest.mark.parametrize("role", ["clinician", "researcher"])
def test_a_modality_finds_what_the_series_rule_found(atrium: AtriumUnderTest,
                                                     role: str) -> None:
    specs = [StudySpec(patient_id=f"SC-{uuid.uuid4().hex[:10]}", modality=modality,
                       deidentified=deidentified, series=1, instances_per_series=1)
             for modality in ("CT", "MR") for deidentified in (False, True)]
    _store(atrium, [blob for spec in specs for blob in make_study(spec)])
    extra = make_instance(specs[0], generate_uid(), 2, 1, Modality="MR")
    _store(atrium, [extra])
    for modality in ("CT", "MR", "US"):
        before = {str(row[0]) for row in atrium.sql(
            _BEFORE, {"phi": role == "clinician", "modality": modality})}
        assert _found(atrium, role, modality=modality) == before
    _no_drift(atrium)


@pytest.mark.parametrize(("index", "researcher"), [
    ("idx_studies_org_created", False), ("idx_studies_org_created_deidentified", True)])
def test_a_searchs_walk_filters_on_its_index_alone(atrium: AtriumUnderTest, index: str,
                                                   researcher: bool) -> None:
    """sql/0025: the walk newest first tests words, modality, dates and flags on the
    index entries (an index-only scan), not on the table's wide rows."""
    with psycopg.connect(atrium.database_url) as conn, conn.transaction():
        for method in ("bitmapscan", "seqscan", "sort"):  # the walk, whatever the counts
            conn.execute(f"SET LOCAL enable_{method} = off")
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT s.id FROM studies s WHERE s.organization_id = %s "
            "AND s.deleted_at IS NULL AND NOT s.patient_deleted"
            + (" AND s.deidentified" if researcher else "")
            + " AND s.modalities @> ARRAY['MR']::text[] "
            "AND s.description_tsv @@ websearch_to_tsquery('english', 'brain') "
            "AND s.study_date >= '2019-01-01' ORDER BY s.created_at DESC, s.id DESC LIMIT 51",
            (uuid.uuid4(),)))
    assert f"Index Only Scan using {index} on studies" in plan, plan
