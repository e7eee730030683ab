"""The live schema, after the migrations, against the data model (tests/data/data_model.md,
a copy of the product's data model): every table, column, type, index and trigger."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atrium.migrations import MigrationError, apply_migrations, sql_directory

pytestmark = pytest.mark.integration

DATA_MODEL = Path(__file__).resolve().parents[1] / "data" / "data_model.md"

# The data model's type names, as PostgreSQL's format_type() spells them.
_TYPES = {
    "UUID": "uuid",
    "TIMESTAMPTZ": "timestamp with time zone",
    "JSONB": "jsonb",
    "TEXT": "text",
    "DATE": "date",
    "TIME": "time without time zone",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "BOOLEAN": "boolean",
    "FLOAT": "double precision",
    "INET": "inet",
    "BYTEA": "bytea",
}


def postgres_type(model_type: str) -> str:
    match = re.fullmatch(r"VARCHAR\((\d+)\)(\[\])?", model_type)
    if match:
        return f"character varying({match.group(1)}){match.group(2) or ''}"
    return _TYPES[model_type]


def parse_data_model() -> dict[str, dict[str, Any]]:
    """{table: {"columns": {name: type}, "indexes": [item, ...]}} from the markdown."""
    tables: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in DATA_MODEL.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^### (\w+)", line)
        if heading:
            name = heading.group(1)
            current = (
                tables.setdefault(name, {"columns": {}, "indexes": []}) if name.islower() else None
            )
            continue
        if current is None:
            continue
        row = re.match(r"^\| (\w+) \| ([A-Z]+(?:\(\d+\))?(?:\[\])?) \|", line)
        if row:
            current["columns"][row.group(1)] = row.group(2)
        elif line.startswith("**Indexes**:"):
            current["indexes"] = split_index_list(line.split(":", 1)[1])
    return {name: spec for name, spec in tables.items() if spec["columns"]}


def split_index_list(text: str) -> list[str]:
    items, depth, item = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(item.strip())
            item = ""
        else:
            item += char
    items.append(item.strip())
    return [i for i in items if i]


MODEL = parse_data_model()


@pytest.fixture(scope="module")
def schema(pg_cluster: Any) -> Any:
    name = "schema_check"
    pg_cluster.drop_database(name)
    pg_cluster.ensure_database(name)
    url = pg_cluster.url(name)
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn
    pg_cluster.drop_database(name)


def test_the_data_model_was_parsed() -> None:
    assert set(MODEL) == {
        "organizations",
        "users",
        "patients",
        "studies",
        "series",
        "instances",
        "slides",
        "annotations",
        "ml_models",
        "predictions",
        "audit_log",
        "recordings",
        "signal_segments",
    }
    assert sum(len(t["columns"]) for t in MODEL.values()) > 150


@pytest.mark.parametrize("table", sorted(MODEL))
def test_every_column_of_the_data_model_exists_with_its_type(schema: Any, table: str) -> None:
    live = dict(
        schema.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        ).fetchall()
    )
    expected = {column: postgres_type(t) for column, t in MODEL[table]["columns"].items()}
    wrong = {c: (t, live.get(c)) for c, t in expected.items() if live.get(c) != t}
    assert not wrong, f"{table}: column (expected type, live type): {wrong}"


def index_definitions(conn: Any, table: str) -> list[tuple[str, str, bool]]:
    return [
        (name, definition, unique)
        for name, definition, unique in conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
            (table,),
        ).fetchall()
    ]


def index_columns(definition: str) -> str:
    """'CREATE INDEX x ON public.t USING btree (a, b DESC) WHERE ...' -> 'a, b DESC'."""
    match = re.search(r"USING \w+ \((.*?)\)(?: WHERE|$)", definition)
    assert match, definition
    return match.group(1)


@pytest.mark.parametrize("table", sorted(t for t in MODEL if MODEL[t]["indexes"]))
def test_every_index_of_the_data_model_exists(schema: Any, table: str) -> None:
    live = index_definitions(schema, table)
    for item in MODEL[table]["indexes"]:
        unique = item.endswith(" unique")
        partial = " WHERE " in item
        columns = item.removesuffix(" unique").split(" WHERE ")[0].strip("() ")
        found = [
            (n, d)
            for n, d, u in live
            if index_columns(d).startswith(columns)
            and (u or not unique)
            and ((" WHERE " in d) == partial)
        ]
        assert found, f"{table}: no index on ({columns}){' unique' if unique else ''} in {live}"


NAMED_INDEXES = {
    "idx_studies_description_fts": (
        "studies",
        "gin",
        "to_tsvector('english'::regconfig, study_description)",
    ),
    "idx_patients_name_fts": ("patients", "gin", "to_tsvector('english'::regconfig"),
    "idx_studies_patient_date": ("studies", "btree", "(patient_id, study_date DESC)"),
    "idx_predictions_model_created": ("predictions", "btree", "(model_id, created_at DESC)"),
    "idx_audit_phi": ("audit_log", "btree", "WHERE (phi_accessed = true)"),
    "idx_active_models": ("ml_models", "btree", "WHERE ((status)::text = 'active'::text)"),
}


@pytest.mark.parametrize("name", sorted(NAMED_INDEXES))
def test_the_named_indexes_of_the_data_model(schema: Any, name: str) -> None:
    table, method, fragment = NAMED_INDEXES[name]
    definitions = {n: d for n, d, _ in index_definitions(schema, table)}
    assert name in definitions, f"{name} missing on {table}"
    assert f"USING {method}" in definitions[name] and fragment in definitions[name], definitions[
        name
    ]


def test_full_text_search_on_patient_names_uses_the_index_and_finds_last_name_only(
    schema: Any,
) -> None:
    org = schema.execute("INSERT INTO organizations (name) VALUES ('fts') RETURNING id").fetchone()[
        0
    ]
    schema.execute(
        "INSERT INTO patients (organization_id, patient_id, last_name) "
        "VALUES (%s, 'FTS-1', 'Fitzgerald')",
        (org,),
    )
    found = schema.execute(
        "SELECT patient_id FROM patients WHERE to_tsvector('english', coalesce(first_name, '') "
        "|| ' ' || coalesce(last_name, '')) @@ plainto_tsquery('english', 'fitzgerald')"
    ).fetchall()
    assert found == [("FTS-1",)]
    schema.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0]
        for r in schema.execute(
            "EXPLAIN SELECT id FROM patients WHERE to_tsvector('english', coalesce(first_name, '') "
            "|| ' ' || coalesce(last_name, '')) @@ plainto_tsquery('english', 'x')"
        ).fetchall()
    )
    schema.execute("RESET enable_seqscan")
    assert "idx_patients_name_fts" in plan


FOREIGN_KEYS = {
    ("users", "organization_id"): "organizations",
    ("patients", "organization_id"): "organizations",
    ("studies", "patient_id"): "patients",
    ("studies", "organization_id"): "organizations",
    ("series", "study_id"): "studies",
    ("instances", "series_id"): "series",
    ("slides", "patient_id"): "patients",
    ("slides", "organization_id"): "organizations",
    ("annotations", "user_id"): "users",
    ("annotations", "parent_id"): "annotations",
    ("predictions", "model_id"): "ml_models",
    ("predictions", "user_id"): "users",
    ("recordings", "patient_id"): "patients",
    ("recordings", "organization_id"): "organizations",
}


@pytest.mark.parametrize(("table", "column"), sorted(FOREIGN_KEYS))
def test_relations_are_foreign_keys(schema: Any, table: str, column: str) -> None:
    targets = [
        r[0]
        for r in schema.execute(
            "SELECT c.confrelid::regclass::text FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
            "WHERE c.contype = 'f' AND c.conrelid = %s::regclass AND a.attname = %s",
            (table, column),
        ).fetchall()
    ]
    assert FOREIGN_KEYS[(table, column)] in targets


def test_unique_keys(schema: Any) -> None:
    org = schema.execute(
        "INSERT INTO organizations (name) VALUES ('uniq') RETURNING id"
    ).fetchone()[0]
    other = schema.execute(
        "INSERT INTO organizations (name) VALUES ('uniq2') RETURNING id"
    ).fetchone()[0]
    schema.execute(
        "INSERT INTO patients (organization_id, patient_id) VALUES (%s, 'M1'), (%s, 'M1')",
        (org, other),
    )  # one MRN in two organizations: two patients
    with pytest.raises(psycopg.errors.UniqueViolation):
        schema.execute(
            "INSERT INTO patients (organization_id, patient_id) VALUES (%s, 'M1')", (org,)
        )
    with pytest.raises(psycopg.errors.UniqueViolation):
        schema.execute("INSERT INTO organizations (name) VALUES ('uniq')")
    schema.execute(
        "INSERT INTO ml_models (model_name, model_version, model_type) "
        "VALUES ('m', '1', 'classification')"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        schema.execute(
            "INSERT INTO ml_models (model_name, model_version, model_type) "
            "VALUES ('m', '1', 'detection')"
        )


def test_patient_id_hash_is_kept_from_the_mrn(schema: Any) -> None:
    org = schema.execute(
        "INSERT INTO organizations (name) VALUES ('hash') RETURNING id"
    ).fetchone()[0]
    pid = schema.execute(
        "INSERT INTO patients (organization_id, patient_id) VALUES (%s, 'MRN-ü') RETURNING id",
        (org,),
    ).fetchone()[0]

    def stored() -> str:
        return schema.execute(
            "SELECT patient_id_hash FROM patients WHERE id = %s", (pid,)
        ).fetchone()[0]

    assert stored() == hashlib.sha256("MRN-ü".encode()).hexdigest()
    schema.execute(
        "UPDATE patients SET patient_id = 'MRN-2', patient_id_hash = 'forged' WHERE id = %s", (pid,)
    )
    assert stored() == hashlib.sha256(b"MRN-2").hexdigest()


@pytest.mark.parametrize("table", sorted(t for t in MODEL if "updated_at" in MODEL[t]["columns"]))
def test_updated_at_follows_every_update(schema: Any, table: str) -> None:
    triggers = [
        r[0]
        for r in schema.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "AND tgfoid = 'atrium_set_updated_at'::regproc",
            (table,),
        ).fetchall()
    ]
    assert triggers, f"{table} has no updated_at trigger"


def test_updated_at_changes_on_update(schema: Any) -> None:
    org = schema.execute(
        "INSERT INTO organizations (name, updated_at) VALUES ('upd', now() - "
        "interval '1 day') RETURNING id"
    ).fetchone()[0]
    schema.execute("UPDATE organizations SET email = 'a@b.c' WHERE id = %s", (org,))
    age = schema.execute(
        "SELECT now() - updated_at FROM organizations WHERE id = %s", (org,)
    ).fetchone()[0]
    assert age.total_seconds() < 60


def test_audit_log_is_append_only(schema: Any) -> None:
    schema.execute("INSERT INTO audit_log (action, phi_accessed) VALUES ('read', true)")
    for statement in (
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            schema.execute(statement)
    assert schema.execute("SELECT count(*) FROM audit_log WHERE action = 'read'").fetchone()[0] == 1


@pytest.mark.parametrize("table", ["audit_log", "recordings", "signal_segments"])
def test_time_tables_are_partitioned_by_month_ahead_of_time(schema: Any, table: str) -> None:
    hypertable = schema.execute("SELECT atrium_uses_timescaledb()").fetchone()[0]
    if hypertable:  # production path; this machine has no TimescaleDB
        pytest.skip("TimescaleDB present: chunks are created on demand")
    assert (
        schema.execute("SELECT relkind FROM pg_class WHERE relname = %s", (table,)).fetchone()[0]
        == "p"
    )
    partitions = {
        r[0]
        for r in schema.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            (table,),
        ).fetchall()
    }
    months = [
        r[0]
        for r in schema.execute(
            "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') "
            "+ make_interval(months => m), "
            '\'"y"YYYY"m"MM\') FROM generate_series(0, 12) m'
        ).fetchall()
    ]
    missing = [m for m in months if f"{table}_{m}" not in partitions]
    assert not missing and f"{table}_default" in partitions


def test_rows_outside_every_month_land_in_the_default_partition(schema: Any) -> None:
    schema.execute("INSERT INTO audit_log (action, event_time) VALUES ('old', '2001-02-03')")
    where = schema.execute(
        "SELECT tableoid::regclass::text FROM audit_log WHERE action = 'old'"
    ).fetchone()[0]
    assert where == "audit_log_default"


def test_expired_audit_months_are_dropped_whole(schema: Any) -> None:
    schema.execute(
        "CREATE TABLE audit_log_y2001m01 PARTITION OF audit_log "
        "FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')"
    )
    schema.execute("INSERT INTO audit_log (action, event_time) VALUES ('ancient', '2001-01-15')")
    assert (
        schema.execute(
            "SELECT atrium_drop_expired_partitions('audit_log', interval '7 years')"
        ).fetchone()[0]
        == 1
    )
    assert (
        schema.execute("SELECT count(*) FROM audit_log WHERE action = 'ancient'").fetchone()[0] == 0
    )


def test_signal_segments_need_their_recording(schema: Any) -> None:
    org = schema.execute("INSERT INTO organizations (name) VALUES ('sig') RETURNING id").fetchone()[
        0
    ]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        schema.execute(
            "INSERT INTO signal_segments (recording_id, channel_index, segment_start, "
            "segment_end) VALUES (gen_random_uuid(), 0, now(), now())"
        )
    rec = schema.execute(
        "INSERT INTO recordings (recording_type, organization_id, recording_date) "
        "VALUES ('ECG', %s, now()) RETURNING id",
        (org,),
    ).fetchone()[0]
    schema.execute(
        "INSERT INTO signal_segments (recording_id, channel_index, segment_start, "
        "segment_end) VALUES (%s, 0, now(), now() + interval '10 s')",
        (rec,),
    )
    schema.execute("DELETE FROM recordings WHERE id = %s", (rec,))
    assert (
        schema.execute(
            "SELECT count(*) FROM signal_segments WHERE recording_id = %s", (rec,)
        ).fetchone()[0]
        == 0
    )


def test_mirror_state_starts_at_zero_and_jobs_exist(schema: Any) -> None:
    assert (
        schema.execute("SELECT last_seq FROM mirror_state WHERE name = 'orthanc'").fetchone()[0]
        == 0
    )
    columns = {
        r[0]
        for r in schema.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0"
        )
    }
    assert {
        "kind",
        "status",
        "parameters",
        "progress_done",
        "progress_total",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    } <= columns


def test_concurrent_migrators_apply_each_migration_once(empty_database_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            results.append(apply_migrations(empty_database_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = sorted(name for names in results for name in names)
    assert applied == sorted(p.stem for p in sql_directory().glob("*.sql"))
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(applied)


def test_an_edited_applied_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    for path in sql_directory().glob("*.sql"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    apply_migrations(empty_database_url, tmp_path)
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(empty_database_url, tmp_path)


def test_a_failing_migration_leaves_nothing_half_applied(
    empty_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match="0002_bad.sql failed"):
        apply_migrations(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute(
            "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL"
        ).fetchone() == (True, True)
        assert conn.execute("SELECT array_agg(version) FROM schema_migrations").fetchone()[0] == [1]


def test_maintenance_creates_months_ahead_and_deletes_old_finished_jobs(schema: Any) -> None:
    schema.execute(
        "INSERT INTO jobs (kind, status, finished_at) VALUES "
        "('backfill', 'succeeded', now() - interval '91 days'), "
        "('backfill', 'succeeded', now() - interval '89 days'), ('backfill', 'running', NULL)"
    )
    done = schema.execute("SELECT atrium_maintain()").fetchone()[0]
    assert done["jobs_deleted"] == 1
    assert schema.execute("SELECT count(*) FROM jobs WHERE kind = 'backfill'").fetchone()[0] == 2
    last_month = schema.execute(
        "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '12 months', "
        "'\"y\"YYYY\"m\"MM')"
    ).fetchone()[0]
    schema.execute(f"DROP TABLE audit_log_{last_month}")
    assert schema.execute("SELECT atrium_maintain()").fetchone()[0]["partitions_created"] == 1


@pytest.mark.parametrize("table", ["studies", "annotations"])
def test_tables_walked_index_only_are_vacuumed_after_one_percent_changes(
        schema: Any, table: str) -> None:
    """sql/0026: a search's or a viewport's walk reads the index alone only on pages
    the visibility map marks, and autovacuum's default waits for a fifth of the table
    to change before it marks them again."""
    options = schema.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
                             (table,)).fetchone()[0]
    assert "autovacuum_vacuum_scale_factor=0.01" in options
    assert "autovacuum_vacuum_insert_scale_factor=0.01" in options
