"""Prometheus metrics: what the request path counts, what a scrape reads, and who
may scrape (atrium.metrics, atrium.api.metrics)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from atrium.api import metrics as metrics_routes
from atrium.api.http import AuditNote, Request, Response, Route, Router, json_response
from atrium.api.metrics import SCRAPE_TOKEN, scrape_token_guard
from atrium.api.openapi import openapi_document
from atrium.auth.principal import Permission
from atrium.auth.request_audit import AuditedApi
from atrium.errors import Unauthorized
from atrium.metrics import UNMATCHED_ROUTE, Metrics, StateCollector
from atrium.settings import SettingsError, load_settings

TOKEN = "s" * 40


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ------------------------------------------------------------ the request path

def test_requests_are_counted_by_route_template_never_by_path() -> None:
    metrics = Metrics(process=False)
    metrics.observe_request("GET", "/api/studies/{id}", 200, 0.004)
    metrics.observe_request("GET", "/api/studies/{id}", 200, 0.2)
    metrics.observe_request("GET", "/api/studies/{id}", 404, 0.001)
    route = {"method": "GET", "route": "/api/studies/{id}"}
    assert value(metrics, "atrium_http_request_duration_seconds_count", **route) == 3
    assert value(metrics, "atrium_http_request_duration_seconds_bucket", **route,
                 le="0.005") == 2
    assert value(metrics, "atrium_http_requests_total", **route, status="200") == 2
    assert value(metrics, "atrium_http_requests_total", **route, status="404") == 1


def test_a_request_no_route_matched_has_one_label_whatever_its_path_or_method() -> None:
    metrics = Metrics(process=False)
    metrics.observe_request("GET", None, 404, 0.001)
    metrics.observe_request("PROPFIND", None, 405, 0.001)
    body, _ = metrics.exposition()
    assert "/api/" not in body.decode()
    assert value(metrics, "atrium_http_requests_total", method="GET", route=UNMATCHED_ROUTE,
                 status="404") == 1
    assert value(metrics, "atrium_http_requests_total", method="other",
                 route=UNMATCHED_ROUTE, status="405") == 1


def test_two_applications_in_one_process_count_apart() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.observe_request("GET", "/api/me", 200, 0.001, withheld=True)
    assert value(first, "atrium_audit_withheld_answers_total") == 1
    assert value(second, "atrium_audit_withheld_answers_total") == 0
    assert value(second, "atrium_http_requests_total", method="GET", route="/api/me",
                 status="200") is None


def test_retention_runs_count_runs_and_rows_per_kind() -> None:
    metrics = Metrics(process=False)
    metrics.record_retention_run("audit", 1200)
    metrics.record_retention_run("audit", 0)
    metrics.record_retention_run("jobs", 7)
    assert value(metrics, "atrium_retention_runs_total", kind="audit") == 2
    assert value(metrics, "atrium_retention_rows_total", kind="audit") == 1200
    assert value(metrics, "atrium_retention_rows_total", kind="jobs") == 7


@pytest.mark.parametrize("kind, rows", [("Audit Log", 1), ("", 1), ("x" * 41, 1),
                                        ("audit", -1)])
def test_a_retention_kind_must_be_a_short_name_and_rows_not_negative(kind: str,
                                                                     rows: int) -> None:
    with pytest.raises(ValueError):
        Metrics(process=False).record_retention_run(kind, rows)


def test_the_scraper_gets_openmetrics_when_it_asks_for_it() -> None:
    metrics = Metrics(process=False)
    plain, plain_type = metrics.exposition("")
    open_body, open_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert plain_type.startswith("text/plain")
    assert open_type.startswith("application/openmetrics-text")
    assert open_body.rstrip().endswith(b"# EOF") and not plain.rstrip().endswith(b"# EOF")


# ------------------------------------------------------------ the audited API

class FakeDatabase:
    autocommit = True  # each statement stands alone, as record_alone asks

    def __init__(self) -> None:
        self.fail = False

    @contextmanager
    def connect(self) -> Any:
        if self.fail:
            raise OSError("database down")
        yield self

    def execute(self, query: str, params: Any = None) -> Any:
        return self

    def fetchone(self) -> tuple[Any, ...]:
        return (None, None, 1)


def audited(metrics: Metrics, db: FakeDatabase) -> AuditedApi:
    def read(_request: Request) -> Response:
        return json_response({"name": "Doe"}, audit=AuditNote("patient", phi=True))

    router = Router([Route("GET", "/api/patients/{id:uuid}", read, auth=("clinician",))])
    return AuditedApi(router, db.connect, observe=metrics.observe_request)


def test_the_audited_api_reports_each_answer_under_its_template() -> None:
    metrics, db = Metrics(process=False), FakeDatabase()
    api = audited(metrics, db)
    answer = api.handle(Request("GET", "/api/patients/6f1c9bd2-63a4-4e4b-9a55-0c1a2b3c4d5e"))
    assert answer.status == 200
    assert api.handle(Request("GET", "/api/nothing/here")).status == 404
    assert value(metrics, "atrium_http_requests_total", method="GET",
                 route="/api/patients/{id}", status="200") == 1
    assert value(metrics, "atrium_http_requests_total", method="GET", route=UNMATCHED_ROUTE,
                 status="404") == 1
    assert value(metrics, "atrium_audit_withheld_answers_total") == 0


def test_a_phi_answer_withheld_for_want_of_its_audit_row_is_counted() -> None:
    metrics, db = Metrics(process=False), FakeDatabase()
    db.fail = True
    answer = audited(metrics, db).handle(
        Request("GET", "/api/patients/6f1c9bd2-63a4-4e4b-9a55-0c1a2b3c4d5e"))
    assert answer.status == 503
    assert value(metrics, "atrium_audit_withheld_answers_total") == 1
    assert value(metrics, "atrium_http_requests_total", method="GET",
                 route="/api/patients/{id}", status="503") == 1


# ------------------------------------------------------------ scrape-time readings

class StateDatabase:
    """Answers the collector's two queries."""

    def __init__(self, jobs: list[tuple[str, str, int]]) -> None:
        self.jobs = jobs
        self.down = False
        self._last = ""

    @contextmanager
    def connect(self) -> Any:
        if self.down:
            raise OSError("database down")
        yield self

    def execute(self, query: str, params: Any = None) -> Any:
        self._last = query
        return self

    def fetchone(self) -> tuple[Any, ...]:
        return (41, 120, 1000.0, 77, 2)

    def fetchall(self) -> list[tuple[str, str, int]]:
        return self.jobs


class Worker:
    pending_deletions = 3
    last_success: float | None = 1090.0
    last_error: str | None = None


def scrape(collector: StateCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = Metrics(process=False)
    metrics.watch(collector)
    body, _ = metrics.exposition()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def test_a_scrape_reads_the_mirror_the_audit_chain_and_the_jobs() -> None:
    db = StateDatabase([("deidentify", "running", 2), ("deidentify", "failed", 1)])
    samples = scrape(StateCollector(db.connect, lambda: 125, Worker(), clock=lambda: 1100.0))
    assert samples[("atrium_audit_rows_total", ())] == 41
    assert samples[("atrium_mirror_cursor", ())] == 120
    assert samples[("atrium_mirror_lag_changes", ())] == 5
    assert samples[("atrium_mirror_cursor_age_seconds", ())] == 100
    assert samples[("atrium_mirror_instances_total", ())] == 77
    assert samples[("atrium_mirror_quarantined_instances", ())] == 2
    assert samples[("atrium_mirror_pending_deletions", ())] == 3
    assert samples[("atrium_mirror_seconds_since_sync", ())] == 10
    assert samples[("atrium_mirror_healthy", ())] == 1
    jobs = {labels: v for (name, labels), v in samples.items() if name == "atrium_jobs"}
    assert jobs[(("kind", "deidentify"), ("status", "running"))] == 2
    assert jobs[(("kind", "deidentify"), ("status", "succeeded"))] == 0  # zero, not absent
    assert len(jobs) == 5
    assert samples[("atrium_scrape_source_up", (("source", "database"),))] == 1


def test_a_scrape_with_the_database_down_still_answers_and_says_so() -> None:
    db = StateDatabase([])
    db.down = True

    def orthanc_down() -> int:
        raise ConnectionError("refused")

    samples = scrape(StateCollector(db.connect, orthanc_down, Worker()))
    assert samples[("atrium_scrape_source_up", (("source", "database"),))] == 0
    assert samples[("atrium_scrape_source_up", (("source", "orthanc"),))] == 0
    assert ("atrium_audit_rows_total", ()) not in samples
    assert samples[("atrium_mirror_pending_deletions", ())] == 3


# ------------------------------------------------------------ who may scrape

def guarded(token: str | None) -> tuple[Any, list[str]]:
    refused: list[str] = []

    def oidc_guard(route: Route, request: Request) -> Request:
        refused.append(request.headers.get("authorization", ""))
        raise Unauthorized("not an OIDC token")

    return scrape_token_guard(oidc_guard, token), refused


METRICS = Route("GET", "/api/metrics", lambda r: json_response({}),
                auth=(Permission.ORTHANC_ADMIN, SCRAPE_TOKEN))
OTHER = Route("GET", "/api/patients", lambda r: json_response({}), auth=("clinician",))


def test_the_scrape_token_opens_the_metrics_route_without_the_oidc_guard() -> None:
    guard, refused = guarded(TOKEN)
    request = Request("GET", "/api/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert guard(METRICS, request) is request
    assert refused == []


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                                           f"Basic {TOKEN}", "", "Bearer "])
def test_any_other_credential_goes_to_the_oidc_guard(authorization: str) -> None:
    guard, refused = guarded(TOKEN)
    with pytest.raises(Unauthorized):
        guard(METRICS, Request("GET", "/api/metrics",
                               headers={"authorization": authorization}))
    assert refused == [authorization]


def test_the_scrape_token_opens_no_other_route() -> None:
    guard, _ = guarded(TOKEN)
    with pytest.raises(Unauthorized):
        guard(OTHER, Request("GET", "/api/patients",
                             headers={"authorization": f"Bearer {TOKEN}"}))


def test_without_a_configured_token_the_guard_is_unchanged() -> None:
    def oidc_guard(route: Route, request: Request) -> Request:
        return request

    assert scrape_token_guard(oidc_guard, None) is oidc_guard


def test_the_route_is_documented_as_text_for_operators_or_the_scraper() -> None:
    class App:
        metrics = Metrics(process=False)

    document = openapi_document(metrics_routes.routes(App()),  # type: ignore[arg-type]
                                {"title": "Atrium", "version": "test"})
    validate(document)
    operation = document["paths"]["/api/metrics"]["get"]
    assert operation["x-atrium-access"] == ["read-metrics", "metrics-scraper"]
    assert set(operation["responses"]["200"]["content"]) == {
        "text/plain", "application/openmetrics-text"}


@pytest.mark.parametrize("token", ["short", "x" * 31, "x" * 20 + " " + "x" * 20])
def test_a_weak_metrics_token_stops_start_up_without_echoing_it(token: str,
                                                                tmp_path: Any) -> None:
    with pytest.raises(SettingsError, match="ATRIUM_METRICS_TOKEN") as raised:
        load_settings({}, {"ATRIUM_DATABASE_URL": "postgresql://a@localhost/a",
                           "ATRIUM_METRICS_TOKEN": token}, cwd=tmp_path)
    assert token not in str(raised.value)


def test_a_metrics_token_is_read_from_the_configuration(tmp_path: Any) -> None:
    settings = load_settings({"Atrium": {"MetricsToken": TOKEN}},
                             {"ATRIUM_DATABASE_URL": "postgresql://a@localhost/a"}, cwd=tmp_path)
    assert settings.metrics_token == TOKEN
