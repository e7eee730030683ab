"""``/api/models``: the platform-wide model registry — registration unique by name
and version, status only forward, roles per SPEC §7, visible to every
organization."""

from __future__ import annotations

import uuid

import requests

from tests.integration.conftest import AtriumUnderTest


def call(atrium: AtriumUnderTest, method: str, path: str, role: str, org: str = "Model Lab",
         **kwargs: object) -> requests.Response:
    return requests.request(method, f"{atrium.url}{path}", headers=atrium.auth(role, org),
                            timeout=30, **kwargs)  # type: ignore[arg-type]


def register(atrium: AtriumUnderTest, name: str, version: str = "1.0",
             role: str = "ml-engineer", **fields: object) -> requests.Response:
    return call(atrium, "POST", "/api/models", role, json={
        "model_name": name, "model_version": version, "model_type": "classification",
        **fields})


def test_a_model_is_registered_found_and_retired_forward_only(atrium: AtriumUnderTest) -> None:
    name = f"chest-xray-{uuid.uuid4().hex[:6]}"
    created = register(atrium, name, framework="pytorch", mlflow_run_id="a1b2c3",
                       metrics={"auc": 0.93, "split": "test"},
                       input_schema={"type": "object"})
    assert created.status_code == 201, created.text
    model = created.json()
    assert model["status"] == "active" and model["metrics"] == {"auc": 0.93, "split": "test"}
    assert created.headers["Location"] == f"/api/models/{model['id']}"
    assert register(atrium, name).status_code == 409  # same name and version
    assert register(atrium, name, "1.1").status_code == 201

    # Every organization sees the registry; only ml-engineers and admins change it.
    elsewhere = call(atrium, "GET", f"/api/models/{model['id']}", "researcher", "Other Lab")
    assert elsewhere.status_code == 200 and elsewhere.json()["model_name"] == name
    listed = call(atrium, "GET", "/api/models", "clinician", "Other Lab",
                  params={"model_name": name}).json()["items"]
    assert sorted(m["model_version"] for m in listed) == ["1.0", "1.1"]
    assert register(atrium, name, "2.0", role="researcher").status_code == 403
    assert call(atrium, "PUT", f"/api/models/{model['id']}", "clinician",
                json={"status": "deprecated"}).status_code == 403

    path = f"/api/models/{model['id']}"
    assert call(atrium, "PUT", path, "ml-engineer", json={"status": "deprecated"}
                ).json()["status"] == "deprecated"
    assert call(atrium, "PUT", path, "ml-engineer", json={"status": "active"}
                ).status_code == 409
    assert call(atrium, "PUT", path, "admin", json={"status": "archived"}
                ).json()["status"] == "archived"
    assert call(atrium, "PUT", path, "ml-engineer", json={"status": "active"}
                ).status_code == 409
    archived = call(atrium, "GET", "/api/models", "ml-engineer",
                    params={"model_name": name, "status": "archived"}).json()["items"]
    assert [m["id"] for m in archived] == [model["id"]]


def test_bad_model_input_is_a_400_problem(atrium: AtriumUnderTest) -> None:
    for body in ({"model_name": "x", "model_version": "1", "model_type": "astrology"},
                 {"model_name": "x", "model_version": "1"},
                 {"model_name": "x", "model_version": "1", "model_type": "regression",
                  "unknown": 1},
                 {"model_name": " padded", "model_version": "1", "model_type": "regression"},
                 {"model_name": "x", "model_version": "1", "model_type": "regression",
                  "metrics": {"auc": [1, 2]}}):
        answer = call(atrium, "POST", "/api/models", "ml-engineer", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert call(atrium, "GET", "/api/models/not-a-uuid", "ml-engineer").status_code == 400
    assert call(atrium, "GET", f"/api/models/{uuid.uuid4()}", "ml-engineer").status_code == 404
    assert call(atrium, "GET", "/api/models", "ml-engineer",
                params={"status": "retired"}).status_code == 400
