"""Every query of docs/QUERIES.md, read from the Markdown itself, run against the
migrated schema holding data made here: the rows it returns, and the index its
plan uses (the block's ``-- index:`` line).

Besides the rows each query must find or leave out, the database holds a
registry's worth of other rows (thousands of studies, series, annotations,
predictions and audit rows), so that the planner chooses as it would at scale
rather than reading a few pages whole.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from atrium.devenv import LocalCluster
from atrium.migrations import apply_migrations

pytestmark = pytest.mark.integration

QUERIES_DOC = Path(__file__).resolve().parents[2] / "docs" / "QUERIES.md"

_BLOCK = re.compile(r"```sql\n-- query: (\w+)\n-- index: ([^\n]+)\n(.*?)```", re.DOTALL)
_PSQL_VARIABLE = re.compile(r":'(\w+)'")


@dataclass(frozen=True)
class DocQuery:
    name: str
    indexes: tuple[str, ...]
    sql: str  # with psycopg's %(name)s placeholders for psql's :'name'


def doc_queries() -> dict[str, DocQuery]:
    text = QUERIES_DOC.read_text(encoding="utf-8")
    found = {}
    for name, indexes, body in _BLOCK.findall(text):
        sql = _PSQL_VARIABLE.sub(r"%(\1)s", body.replace("%", "%%")).strip().rstrip(";")
        found[name] = DocQuery(name, tuple(i.strip() for i in indexes.split(",")), sql)
    return found


QUERIES = doc_queries()


def test_the_document_holds_the_five_queries_the_data_model_promises() -> None:
    assert set(QUERIES) == {"cohort", "annotated_studies", "confident_predictions",
                            "phi_access_per_user", "storage_per_organization"}


# ------------------------------------------------------------------ the data

@dataclass
class World:
    url: str
    ids: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.ids[name]


def _one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _background(conn: psycopg.Connection[Any], north: uuid.UUID, south: uuid.UUID) -> None:
    """Rows none of the queries may return, in the numbers a registry holds."""
    conn.execute("""
        INSERT INTO patients (patient_id, organization_id, is_deidentified, sex)
        SELECT 'BG-' || g, %(north)s, g %% 5 <> 0, 'U' FROM generate_series(1, 500) g""",
                 {"north": north})
    # Studies of 2000-2016, with tag JSON the size a mirrored study carries.
    conn.execute("""
        INSERT INTO studies (study_instance_uid, patient_id, organization_id, study_date,
                             modality, metadata)
        SELECT '1.2.999.' || g, p.id, %(north)s, date '2000-01-01' + g * 2,
               CASE WHEN g %% 2 = 0 THEN 'CT' ELSE 'MR' END,
               jsonb_build_object('StudyDescription', 'background', 'InstitutionName',
                                  repeat('x', 900))
        FROM generate_series(1, 3000) g JOIN patients p ON p.patient_id = 'BG-' || (g %% 500 + 1)
        """, {"north": north})
    conn.execute("""
        INSERT INTO series (series_instance_uid, study_id, modality, body_part_examined)
        SELECT st.study_instance_uid || '.' || n, st.id, st.modality,
               (ARRAY['CHEST', 'HEAD'])[n]
        FROM studies st CROSS JOIN generate_series(1, 2) n
        WHERE st.study_instance_uid LIKE '1.2.999.%'""")
    conn.execute("""
        INSERT INTO annotations (annotation_type, target_id, target_type, label,
                                 organization_id, patient_id)
        SELECT 'dicom', st.id, 'study', 'background-' || (g %% 40), %(north)s, st.patient_id
        FROM generate_series(1, 4000) g
        JOIN studies st ON st.study_instance_uid = '1.2.999.' || (g %% 3000 + 1)""",
                 {"north": north})
    # A registry of 30 models whose predictions accumulated over two years.
    conn.execute("""
        INSERT INTO ml_models (model_name, model_version, model_type)
        SELECT 'background-model-' || g, '1', 'classification' FROM generate_series(1, 30) g""")
    conn.execute("""
        INSERT INTO predictions (model_id, target_id, target_type, confidence, organization_id,
                                 patient_id, created_at)
        SELECT m.id, st.id, 'study', (g %% 100) / 100.0, %(north)s, st.patient_id,
               now() - make_interval(hours => 3 * g)
        FROM generate_series(1, 6000) g
        JOIN studies st ON st.study_instance_uid = '1.2.999.' || (g %% 3000 + 1)
        JOIN ml_models m ON m.model_name = 'background-model-' || (g %% 30 + 1)""",
                 {"north": north})
    # Most audit rows carry no PHI; old PHI rows lie outside the 30 days.
    conn.execute("""
        INSERT INTO audit_log (event_time, keycloak_id, organization_id, action, phi_accessed)
        SELECT now() - make_interval(secs => g), 'kc-dave', %(north)s, 'GET /api/studies', false
        FROM generate_series(1, 3000) g""", {"north": north})
    conn.execute("""
        INSERT INTO audit_log (event_time, keycloak_id, organization_id, action, phi_accessed)
        SELECT now() - interval '60 days' - make_interval(mins => g), 'kc-dave', %(north)s,
               'GET /api/patients/{id}', true
        FROM generate_series(1, 500) g""", {"north": north})
    conn.execute("""
        INSERT INTO audit_log (event_time, keycloak_id, organization_id, action, phi_accessed)
        SELECT now() - make_interval(mins => g), 'kc-erin', %(south)s,
               'GET /api/patients/{id}', true
        FROM generate_series(1, 300) g""", {"south": south})


class Maker:
    """Inserts one row and remembers its id by name."""

    def __init__(self, conn: psycopg.Connection[Any], world: World) -> None:
        self.conn, self.world = conn, world

    def __call__(self, key: str, table: str, /, **values: Any) -> uuid.UUID:
        columns = ", ".join(values)
        marks = ", ".join(f"%({column})s" for column in values)
        row_id = _one(self.conn, f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
                                 "RETURNING id", values)
        self.world.ids[key] = row_id
        return row_id  # type: ignore[no-any-return]


def _studies(make: Maker, north: uuid.UUID, south: uuid.UUID) -> None:
    """Studies of March 2023 and around it, their series and instances."""
    for name, mrn, deidentified, org in (("p1", "ANON-1", True, north),
                                         ("p2", "ANON-2", True, north),
                                         ("p3", "ANON-3", True, north),
                                         ("pi", "MRN-9", False, north),
                                         ("ps", "ANON-S", True, south)):
        make(name, "patients", patient_id=mrn, organization_id=org,
             is_deidentified=deidentified, sex="F",
             first_name=None if deidentified else "Jane")
    w = make.world
    studies = {  # name: patient, date, bytes, instances, organization, deleted
        "s1": ("p1", "2023-03-05", 1000, 10, north, False),
        "s2": ("p2", "2023-03-20", 2000, 20, north, False),
        "s3": ("p3", "2023-03-31", 3000, 30, north, False),
        "si": ("pi", "2023-03-10", 4000, 40, north, False),  # identified patient
        "sh": ("p1", "2023-03-12", 100, 1, north, False),  # head only
        "sl": ("p2", "2023-04-01", 200, 2, north, False),  # after the range
        "sx": ("p3", "2023-03-16", 300, 3, north, False),  # its chest series deleted
        "sd": ("p3", "2023-03-15", 5000, 50, north, True),  # deleted
        "ss": ("ps", "2023-03-05", 500, 5, south, False),  # another organization
    }
    for name, (patient, date, size, count, org, deleted) in studies.items():
        make(name, "studies", study_instance_uid=f"1.2.826.{name}.{uuid.uuid4().int % 10**12}",
             patient_id=w[patient], organization_id=org, study_date=dt.date.fromisoformat(date),
             modality="CT", storage_size_bytes=size, number_of_instances=count,
             deleted_at=dt.datetime.now(dt.UTC) if deleted else None)
    series = {  # name: study, modality, body part, instances, deleted
        "se1a": ("s1", "CT", "CHEST", 4, False), "se1b": ("s1", "CT", "CHEST", 6, False),
        "se1c": ("s1", "MR", "CHEST", 9, False), "se2a": ("s2", "CT", "CHEST", 20, False),
        "se2b": ("s2", "CT", "ABDOMEN", 5, False), "se3a": ("s3", "CT", "CHEST", 30, False),
        "sei": ("si", "CT", "CHEST", 40, False), "seh": ("sh", "CT", "HEAD", 1, False),
        "sel": ("sl", "CT", "CHEST", 2, False), "sex": ("sx", "CT", "CHEST", 3, True),
        "sed": ("sd", "CT", "CHEST", 50, False), "ses": ("ss", "CT", "CHEST", 5, False),
    }
    for name, (study, modality, body_part, count, deleted) in series.items():
        make(name, "series", series_instance_uid=f"1.2.826.{name}.{uuid.uuid4().int % 10**12}",
             study_id=w[study], modality=modality, body_part_examined=body_part,
             number_of_instances=count,
             deleted_at=dt.datetime.now(dt.UTC) if deleted else None)
    for name, series_name, deleted in (("i2", "se2a", False), ("i3", "se3a", False),
                                       ("i3d", "se3a", True), ("ii", "sei", False)):
        make(name, "instances", sop_instance_uid=f"1.2.826.{name}.{uuid.uuid4().int % 10**12}",
             series_id=w[series_name],
             deleted_at=dt.datetime.now(dt.UTC) if deleted else None)
    for name, org, file_format, size, deleted in (
            ("slide", north, "TIFF", 1000, False), ("slide_unsized", north, "SVS", None, False),
            ("slide_dicom", north, "DICOM", 7777, False),
            ("slide_deleted", north, "TIFF", 9999, True)):
        make(name, "slides", slide_id=name, organization_id=org, file_format=file_format,
             file_size_bytes=size, deleted_at=dt.datetime.now(dt.UTC) if deleted else None)


def _annotations(make: Maker, north: uuid.UUID, south: uuid.UUID) -> None:
    w = make.world

    def annotate(name: str, target: str, kind: str, user: str, label: str = "nodule",
                 org: uuid.UUID = north, **extra: Any) -> uuid.UUID:
        return make(name, "annotations", annotation_type="wsi" if kind == "slide" else "dicom",
                    target_id=w[target], target_type=kind, user_id=w[user], label=label,
                    organization_id=org, **extra)

    first = annotate("a1v1", "s1", "study", "alice", is_latest=False)
    annotate("a1v2", "s1", "study", "alice", version=2, parent_id=first, root_id=first)
    annotate("a1b", "s1", "study", "bob")
    annotate("a2s", "se2a", "series", "alice")
    annotate("a2i", "i2", "instance", "alice")
    annotate("a3", "i3", "instance", "bob")
    annotate("a3gone", "i3d", "instance", "bob")  # its instance deleted
    annotate("a3deleted", "s3", "study", "bob", deleted_at=dt.datetime.now(dt.UTC))
    annotate("amass", "s1", "study", "alice", label="mass")
    annotate("aident", "si", "study", "alice")  # an identified patient's study
    annotate("aslide", "slide", "slide", "alice")
    annotate("asouth", "ss", "study", "carol", org=south)


def _predictions(make: Maker, north: uuid.UUID, south: uuid.UUID) -> None:
    w = make.world
    for name, model_name, version in (("m1", "lung-ct", "1.0"), ("m2", "lung-ct", "2.0"),
                                      ("mo", "other-model", "1.0")):
        make(name, "ml_models", model_name=model_name, model_version=version,
             model_type="classification")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)  # no window: still found
    for name, model, target, kind, confidence, org, when in (
            ("pa", "m1", "s1", "study", 0.95, north, None),
            ("pb", "m2", "se2a", "series", 0.91, north, None),
            ("pc", "m2", "i2", "instance", 0.97, north, None),
            ("pd", "m1", "s3", "study", 0.5, north, None),  # under the threshold
            ("pe", "m1", "si", "study", 0.99, north, None),  # an identified patient
            ("pf", "m1", "s1", "study", 0.98, north, long_ago),
            ("pg", "mo", "s1", "study", 0.99, north, None),  # another model
            ("ph", "m1", "ss", "study", 0.99, south, None),  # another organization
            ("pi", "m1", "slide", "slide", 0.99, north, None)):  # no study
        make(name, "predictions", model_id=w[model], target_id=w[target], target_type=kind,
             confidence=confidence, organization_id=org, user_id=w["alice"],
             results=Jsonb({"class": f"class-{name}"}),
             created_at=when or dt.datetime.now(dt.UTC))


def _audit(make: Maker, north: uuid.UUID, south: uuid.UUID) -> None:
    w = make.world
    now = dt.datetime.now(dt.UTC)
    resources = [uuid.uuid4(), uuid.uuid4()]
    for user, org, days, phi, resource in (
            ("alice", north, 1, True, resources[0]), ("alice", north, 2, True, resources[0]),
            ("alice", north, 3, True, resources[1]), ("alice", north, 45, True, resources[1]),
            ("bob", north, 1, True, resources[1]), ("bob", north, 1, False, resources[0]),
            ("bob", north, 2, False, resources[0]), ("carol", south, 1, True, resources[0]),
            ("carol", south, 2, True, resources[0])):
        make.conn.execute(
            "INSERT INTO audit_log (event_time, user_id, keycloak_id, organization_id, action, "
            "resource_type, resource_id, phi_accessed) VALUES (%s, %s, %s, %s, "
            "'GET /api/patients/{id}', 'patients', %s, %s)",
            (now - dt.timedelta(days=days), w[user], f"kc-{user}", org, resource, phi))
    w.ids["resources"] = resources


@pytest.fixture(scope="module")
def world(pg_cluster: LocalCluster) -> Iterator[World]:
    name = f"queries_{uuid.uuid4().hex[:10]}"
    pg_cluster.ensure_database(name)
    url = pg_cluster.url(name)
    apply_migrations(url)
    built = World(url)
    with psycopg.connect(url) as conn:
        make = Maker(conn, built)
        north = make("north", "organizations", name="Queries North")
        south = make("south", "organizations", name="Queries South")
        make("empty", "organizations", name="Queries Empty")
        make("gone", "organizations", name="Queries Gone", deleted_at=dt.datetime.now(dt.UTC))
        for user, org in (("alice", north), ("bob", north), ("carol", south)):
            make(user, "users", keycloak_id=f"kc-{user}", username=user, organization_id=org)
        _background(conn, north, south)
        _studies(make, north, south)
        _annotations(make, north, south)
        _predictions(make, north, south)
        _audit(make, north, south)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    yield built
    pg_cluster.drop_database(name)


# ------------------------------------------------------------------ running them

def run(world: World, name: str, **params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(world.url) as conn, conn.cursor() as cur:
        cur.execute(QUERIES[name].sql, params)
        assert cur.description is not None
        columns = [c.name for c in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def plan_indexes(world: World, name: str, **params: Any) -> set[str]:
    """The indexes the plan of ``name`` reads, by the names docs give them: an index
    of a partition is named by the partitioned index it belongs to."""
    with psycopg.connect(world.url) as conn:
        plan = _one(conn, "EXPLAIN (FORMAT JSON) " + QUERIES[name].sql, params)
        found: set[str] = set()

        def walk(node: dict[str, Any]) -> None:
            if "Index Name" in node:
                found.add(node["Index Name"])
            for child in node.get("Plans", []):
                walk(child)

        walk(plan[0]["Plan"])
        return {_one(conn, "SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text "
                           "FROM pg_class c WHERE c.relname = %s", (index,))
                for index in found}


def assert_plan_uses_its_index(world: World, name: str, **params: Any) -> None:
    used = plan_indexes(world, name, **params)
    missing = set(QUERIES[name].indexes) - used
    if missing:
        with psycopg.connect(world.url) as conn:
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + QUERIES[name].sql,
                                                            params))
        pytest.fail(f"{name}: the plan uses {sorted(used)}, not {sorted(missing)}:\n{plan}")


COHORT = {"modality": "CT", "body_part": "CHEST", "date_from": dt.date(2023, 3, 1),
          "date_to": dt.date(2023, 4, 1)}


def test_the_cohort_holds_the_de_identified_studies_of_the_range(world: World) -> None:
    rows = run(world, "cohort", organization_id=world["north"], **COHORT)
    assert [(r["study_id"], r["matching_series"], r["matching_instances"]) for r in rows] == [
        (world["s1"], 2, 10), (world["s2"], 1, 20), (world["s3"], 1, 30)]
    assert [r["pseudonym"] for r in rows] == ["ANON-1", "ANON-2", "ANON-3"]
    assert_plan_uses_its_index(world, "cohort", organization_id=world["north"], **COHORT)


def test_annotated_studies_count_each_latest_live_annotation_once(world: World) -> None:
    params = {"organization_id": world["north"], "label": "nodule"}
    rows = run(world, "annotated_studies", **params)
    expected = sorted([(world["s1"], 2, 2), (world["s2"], 2, 1), (world["s3"], 1, 1)],
                      key=lambda r: (-r[1], str(r[0])))
    assert [(r["study_id"], r["annotations"], r["annotators"]) for r in rows] == expected
    assert_plan_uses_its_index(world, "annotated_studies", **params)


def test_confident_predictions_come_with_their_study_pseudonym_and_version(
        world: World) -> None:
    params = {"organization_id": world["north"], "model_name": "lung-ct",
              "min_confidence": 0.9}
    rows = run(world, "confident_predictions", **params)
    assert [(r["prediction_id"], r["model_version"], r["pseudonym"]) for r in rows] == [
        (world["pf"], "1.0", "ANON-1"), (world["pc"], "2.0", "ANON-2"),
        (world["pa"], "1.0", "ANON-1"), (world["pb"], "2.0", "ANON-2")]
    assert rows[0]["predicted_class"] == "class-pf"
    assert_plan_uses_its_index(world, "confident_predictions", **params)


def test_phi_access_is_counted_per_user_over_the_last_30_days(world: World) -> None:
    rows = run(world, "phi_access_per_user", organization_id=world["north"])
    assert [(r["user_id"], r["username"], r["phi_accesses"], r["resources"])
            for r in rows] == [(world["alice"], "alice", 3, 2), (world["bob"], "bob", 1, 1)]
    assert_plan_uses_its_index(world, "phi_access_per_user", organization_id=world["north"])


def test_storage_is_summed_per_live_organization(world: World) -> None:
    rows = run(world, "storage_per_organization")
    assert [(r["organization_id"], r["studies"], r["instances"], r["dicom_bytes"], r["slides"],
             r["slide_bytes"], r["total_bytes"]) for r in rows] == [
        (world["north"], 3007, 106, 10600, 2, 1000, 11600),
        (world["south"], 1, 5, 500, 0, 0, 500),
        (world["empty"], 0, 0, 0, 0, 0, 0)]
    assert_plan_uses_its_index(world, "storage_per_organization")
