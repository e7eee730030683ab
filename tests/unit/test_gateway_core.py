"""The pure parts of the security edge: route kinds, the internal credential,
QIDO translation and STOW multipart parsing."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import PoolTimeout

from atrium.api.http import Request, Response
from atrium.auth.internal import INTERNAL_HEADER, internal_secret, is_internal_call
from atrium.auth.request_filter import OrthancScope, RouteKind, orthanc_scope, route_kind
from atrium.dicomweb.gateway import (
    DicomWebGateway,
    _multipart_body,
    _multipart_parts,
    route_template,
)
from atrium.dicomweb.qido import (
    INSTANCES,
    SERIES,
    STUDIES,
    Level,
    page_sql,
    parse_query,
    split_uids,
    wildcard_to_like,
)
from atrium.errors import BadRequest, UnsupportedMediaType
from tests.support.dicomgen import StudySpec, make_study

PUBLIC, PRIVATE = "/dicom-web/", "/atrium-dicomweb-plugin/"


@pytest.mark.parametrize(("uri", "kind"), [
    ("/api/patients", RouteKind.ATRIUM_API),
    ("/dicom-web/studies", RouteKind.DICOMWEB),
    ("/dicom-web", RouteKind.DICOMWEB),
    ("/atrium-dicomweb-plugin/studies", RouteKind.DICOMWEB_PLUGIN),
    ("/instances", RouteKind.ORTHANC),
    ("/app/explorer.html", RouteKind.ORTHANC),
    ("/apis", RouteKind.ORTHANC),
    ("/", RouteKind.ORTHANC),
    ("/dicom-webx/studies", RouteKind.ORTHANC),
])
def test_route_kinds(uri: str, kind: RouteKind) -> None:
    assert route_kind(uri, PUBLIC, PRIVATE) is kind


def test_the_internal_secret_is_private_and_stable(tmp_path: Path) -> None:
    secrets = []
    threads = [threading.Thread(target=lambda: secrets.append(internal_secret(tmp_path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(secrets)) == 1 and len(secrets[0]) >= 40
    path = tmp_path / "keys" / "internal-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["internal-secret"]


def test_the_internal_credential_counts_only_from_loopback(tmp_path: Path) -> None:
    secret = internal_secret(tmp_path)
    headers = {INTERNAL_HEADER.lower(): secret}
    assert is_internal_call(headers, "127.0.0.1", secret)
    assert is_internal_call(headers, "::1", secret)
    # How a dual-stack listener reports a connection from 127.0.0.1.
    assert is_internal_call(headers, "::ffff:127.0.0.1", secret)
    assert not is_internal_call(headers, "10.0.0.5", secret)
    assert not is_internal_call(headers, "::ffff:10.0.0.5", secret)
    assert not is_internal_call({INTERNAL_HEADER.lower(): secret[:-1] + "x"}, "127.0.0.1",
                                secret)
    assert not is_internal_call({}, "127.0.0.1", secret)
    assert not is_internal_call(headers, "not an address", secret)


def test_dicom_wildcards_become_escaped_like_patterns() -> None:
    assert wildcard_to_like("Doe*") == "Doe%"
    assert wildcard_to_like("D?e") == "D_e"
    assert wildcard_to_like("100%_x\\") == "100\\%\\_x\\\\"
    assert split_uids("1.2,1.3\\1.4, ") == ["1.2", "1.3", "1.4"]


def render(query: dict[str, str], level: Level = STUDIES) -> str:
    parsed = parse_query(query, level)
    return " AND ".join(c.as_string(None) if isinstance(c, sql.Composed) else str(c)
                        for c in parsed.conditions)


def test_qido_keys_by_keyword_or_tag_become_sql_and_the_rest_passes_through() -> None:
    parsed = parse_query({"PatientID": "A*", "00080020": "20240101-20240131",
                                "includefield": "StudyDescription", "limit": "5",
                                "offset": "10", "SeriesDescription": "x"})
    assert parsed.params == {"mrn": "A%", "date_from": "2024-01-01", "date_to": "2024-01-31"}
    assert (parsed.limit, parsed.offset) == (5, 10)
    # Keys evaluated in SQL are not asked of the plugin again.
    assert parsed.passthrough == {"includefield": "StudyDescription", "SeriesDescription": "x"}
    open_ended = parse_query({"StudyDate": "-20240131"})
    assert open_ended.params == {"date_to": "2024-01-31"}
    exact = parse_query({"StudyDate": "20240131"})
    assert exact.params == {"date_from": "2024-01-31", "date_to": "2024-01-31"}
    assert parse_query({"limit": "100000"}).limit == 1000


def test_each_level_evaluates_its_own_keys_and_those_above_it() -> None:
    query = {"0020000E": "1.2.3,1.2.4", "Modality": "CT\\M?", "SeriesNumber": "7",
             "SOPInstanceUID": "1.9", "InstanceNumber": "3", "PatientID": "P1",
             "ModalitiesInStudy": "CT"}
    studies, series, instances = (parse_query(query, level)
                                  for level in (STUDIES, SERIES, INSTANCES))
    # A study search evaluates study keys only; the plugin narrows by the rest.
    assert set(studies.passthrough) == {"0020000E", "Modality", "SeriesNumber",
                                        "SOPInstanceUID", "InstanceNumber"}
    assert studies.params == {"mrn": "P1", "modalities": ["CT"]}
    assert set(series.passthrough) == {"SOPInstanceUID", "InstanceNumber",
                                       "ModalitiesInStudy"}
    assert series.params == {"series_uids": ["1.2.3", "1.2.4"], "modality": ["CT", "M_"],
                             "series_number": 7, "mrn": "P1"}
    assert set(instances.passthrough) == {"ModalitiesInStudy"}
    assert instances.params == {**series.params, "sop_uids": ["1.9"], "instance_number": 3}
    assert "i.sop_instance_uid = ANY(%(sop_uids)s)" in render(query, INSTANCES)
    assert "se.modality LIKE ANY(%(modality)s)" in render(query, SERIES)


def test_an_empty_key_asks_for_the_attribute_and_matches_everything() -> None:
    for level in (STUDIES, SERIES, INSTANCES):
        parsed = parse_query({"StudyInstanceUID": "", "SeriesNumber": ""}, level)
        assert parsed.conditions == []
        assert "StudyInstanceUID" not in parsed.passthrough


def test_a_page_is_asked_with_one_row_more_than_the_limit() -> None:
    organization = uuid.uuid4()
    for level in (STUDIES, SERIES, INSTANCES):
        statement, params = page_sql(parse_query({"limit": "10", "offset": "20"}, level),
                                     organization, False)
        assert (params["limit"], params["offset"], params["org"]) == (11, 20, organization)
        text = statement.as_string(None)
        assert "s.organization_id = %(org)s" in text and "p.is_deidentified)" in text
        assert text.index("ORDER BY") < text.index("LIMIT")


@pytest.mark.parametrize(("query", "level"), [
    ({"StudyDate": "yesterday"}, STUDIES), ({"StudyDate": "2024-01-01"}, STUDIES),
    ({"limit": "-1"}, STUDIES), ({"offset": "x"}, STUDIES),
    ({"SeriesNumber": "seven"}, SERIES), ({"InstanceNumber": "1.5"}, INSTANCES),
    ({"SeriesNumber": "99999999999"}, INSTANCES)])
def test_bad_qido_values_are_400(query: dict[str, str], level: Level) -> None:
    with pytest.raises(BadRequest):
        parse_query(query, level)


def multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + part + b"\r\n" for part in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_parts_are_split_and_rebuilt_without_the_refused_ones() -> None:
    first, second = StudySpec(), StudySpec()
    blobs = [make_study(first)[0], make_study(second)[0], b"not dicom at all"]
    body, content_type = multipart(blobs)
    boundary, parts = _multipart_parts(body, content_type)
    assert [part.payload for part in parts] == blobs
    rebuilt = _multipart_body(boundary, parts[1:])
    assert [part.payload for part in _multipart_parts(rebuilt, content_type)[1]] == blobs[1:]
    with pytest.raises(UnsupportedMediaType):
        _multipart_parts(body, "application/dicom")


@pytest.mark.parametrize(("uri", "scope", "level"), [
    ("/system", OrthancScope.SYSTEM, None),
    ("/statistics/", OrthancScope.SYSTEM, None),
    ("/studies/0b1c1f4a-6f0e3bd1-2f1f3c55-3e9a6f0e-1c2d3e4f", OrthancScope.RESOURCE, "studies"),
    ("/instances/0b1c1f4a-6f0e3bd1-2f1f3c55-3e9a6f0e-1c2d3e4f/file",
     OrthancScope.RESOURCE, "instances"),
    ("/studies", OrthancScope.EVERYTHING, None),
    ("/studies/not-an-orthanc-id", OrthancScope.EVERYTHING, None),
    ("/tools/find", OrthancScope.EVERYTHING, None),
    ("/app/explorer.html", OrthancScope.EVERYTHING, None),
    ("/", OrthancScope.EVERYTHING, None),
])
def test_orthanc_routes_by_what_they_reach(uri: str, scope: OrthancScope,
                                           level: str | None) -> None:
    assert orthanc_scope(uri)[:2] == (scope, level)


def test_an_unreachable_database_is_a_503_to_retry_from_the_gateway(
        caplog: pytest.LogCaptureFixture) -> None:
    class DownGuard:
        def caller(self, authorization: str | None) -> None:
            raise psycopg.errors.AdminShutdown("terminating connection")

    def connect() -> None:
        raise PoolTimeout("couldn't get a connection after 5.00 sec")

    observed: list[tuple[Any, ...]] = []
    gateway = DicomWebGateway(DownGuard(), connect, forward=None,  # type: ignore[arg-type]
                              public_root="/dicom-web", plugin_root="/dicom-web-plugin",
                              observe=lambda *seen: observed.append(seen))
    answer = gateway.handle(Request("GET", "/studies", headers={"authorization": "Bearer x"}))
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    assert "Traceback" not in caplog.text
    # Counted for the metrics: a refusal, not an answer withheld for want of its record.
    [(method, route, status, seconds, withheld)] = observed
    assert (method, route, status, withheld) == ("GET", "/dicom-web/studies", 503, False)
    assert seconds >= 0


@pytest.mark.parametrize(("path", "template"), [
    ("/studies", "/dicom-web/studies"),
    ("/studies/1.2.3/series/4.5/instances/6.7/frames/1,2",
     "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"),
    ("/studies/1.2.3/metadata", "/dicom-web/studies/{study}/metadata"),
    ("/series", "/dicom-web/series"),
    ("/studies/1.2.3/secret-name/x", "/dicom-web/studies/{study}/{other}/{other}"),
])
def test_dicomweb_routes_are_counted_by_template_never_by_uid(path: str, template: str) -> None:
    assert route_template("/dicom-web", path) == template
