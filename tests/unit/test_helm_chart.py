"""The Helm chart under deploy/helm/atrium, checked without Helm or a cluster.

Neither `helm` nor `kubeconform` installs here from pip, npm or apt, so the templates
are rendered by a small substitute for Helm's engine that knows only what the chart
uses — ``{{ .Values.a.b }}``, ``{{ .Release.Name }}``, the ``quote`` and ``toJson``
pipes — and refuses anything else, so that the chart cannot grow templating this
test would not render. Each rendered document is then validated against the
Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields fail),
and cross-checked: selectors against pod labels, probes and Service target ports
against container ports, Secret references against values, the Orthanc JSON
against orthanc-config/orthanc.json.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from atrium import settings as atrium_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "atrium"
KUBERNETES_VERSIONS = ("1.25.0", "1.30.0")  # the chart's kubeVersion floor, and a recent one
RELEASE = "clinic"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
EXPRESSION = re.compile(r"^\.(Values(?:\.[A-Za-z_][A-Za-z0-9_]*)+|Release\.Name)"
                        r"(?:\s*\|\s*(quote|toJson))?$")


def values(**overrides: Any) -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(loaded, dict)
    result = copy.deepcopy(loaded)
    for dotted, value in overrides.items():
        *parents, last = dotted.split("__")
        target = result
        for key in parents:
            target = target[key]
        target[last] = value
    return result


def render_text(text: str, chart_values: dict[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        parsed = EXPRESSION.match(match.group(1))
        assert parsed, f"templating this test does not render: {match.group(0)}"
        path, pipe = parsed.groups()
        if path == "Release.Name":
            value: Any = RELEASE
        else:
            value = chart_values
            for key in path.split(".")[1:]:
                assert isinstance(value, dict) and key in value, f"no value {path}"
                value = value[key]
        if pipe == "quote":
            return json.dumps(str(value))
        if pipe == "toJson":
            return json.dumps(value)
        assert not isinstance(value, (dict, list)), f"{path} needs toJson"
        return str(value)

    return ACTION.sub(substitute, text)


def render(chart_values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """kind -> the rendered document (one document of each kind)."""
    chart_values = values() if chart_values is None else chart_values
    documents: dict[str, dict[str, Any]] = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for document in yaml.safe_load_all(render_text(template.read_text(), chart_values)):
            if document is None:
                continue
            assert document["kind"] not in documents, f"two {document['kind']}s"
            documents[document["kind"]] = document
    return documents


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return render()


def pod_spec(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(rendered["Deployment"]["spec"]["template"]["spec"])


def container(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(rendered)["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_chart_metadata_is_a_helm_3_application() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "atrium"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart.get("appVersion") and chart.get("description")


def test_the_templates_are_the_expected_kinds(rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_against_the_kubernetes_schemas(
        rendered: dict[str, dict[str, Any]], version: str) -> None:
    for kind, document in rendered.items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{kind} is not a valid {kind} of Kubernetes {version}: "
                        f"{str(error).splitlines()[0]} at {list(error.path)}")


def test_names_and_labels(rendered: dict[str, dict[str, Any]]) -> None:
    for kind, document in rendered.items():
        name = document["metadata"]["name"]
        assert DNS_1123.match(name) and len(name) <= 63, f"{kind}: name {name!r}"
        assert name.startswith(RELEASE), f"{kind}: {name} does not carry the release name"
        assert document["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_replicas_come_from_values() -> None:
    assert render()["Deployment"]["spec"]["replicas"] == values()["replicaCount"] >= 2
    assert render(values(replicaCount=5))["Deployment"]["spec"]["replicas"] == 5


def test_selectors_match_the_pod_labels(rendered: dict[str, dict[str, Any]]) -> None:
    deployment = rendered["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    for kind, selector in (("Deployment", deployment["selector"]["matchLabels"]),
                           ("Service", rendered["Service"]["spec"]["selector"]),
                           ("PodDisruptionBudget",
                            rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])):
        assert selector and selector.items() <= labels.items(), f"{kind} selects no pod"
    minimum = rendered["PodDisruptionBudget"]["spec"]["minAvailable"]
    assert isinstance(minimum, int) and 1 <= minimum < deployment["replicas"]


def test_probes_and_service_target_the_container_ports(
        rendered: dict[str, dict[str, Any]]) -> None:
    main = container(rendered)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    orthanc = json.loads(rendered["ConfigMap"]["data"]["atrium.json"])
    assert ports == {"http": orthanc["HttpPort"], "dicom": orthanc["DicomPort"]}
    readiness = main["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/api/health" and readiness["port"] in ports
    for probe in ("livenessProbe", "startupProbe"):
        handler = main[probe].get("httpGet") or main[probe].get("tcpSocket")
        assert handler and handler["port"] in ports, probe
    service_ports = rendered["Service"]["spec"]["ports"]
    assert {p["name"]: p["targetPort"] for p in service_ports} == {"http": "http",
                                                                   "dicom": "dicom"}


def test_volumes_mounts_and_references_resolve(rendered: dict[str, dict[str, Any]]) -> None:
    spec = pod_spec(rendered)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for each in [*spec["initContainers"], *spec["containers"]]:
        for mount in each["volumeMounts"]:
            assert mount["name"] in volumes, f"{each['name']} mounts {mount['name']}"
    assert volumes["orthanc-config"]["configMap"]["name"] == \
        rendered["ConfigMap"]["metadata"]["name"]
    config_mount = next(m for m in container(rendered)["volumeMounts"]
                        if m["name"] == "orthanc-config")
    assert config_mount["subPath"] in rendered["ConfigMap"]["data"]
    chart_values = values()
    assert volumes["orthanc-storage"]["persistentVolumeClaim"]["claimName"] == \
        chart_values["orthancStorage"]["existingClaim"]
    assert volumes["anchor-secret"]["secret"]["secretName"] == \
        chart_values["secrets"]["anchorKeyName"]
    references = {ref["valueFrom"]["secretKeyRef"]["name"]
                  for ref in container(rendered)["env"] if "valueFrom" in ref}
    assert references == {chart_values["secrets"]["name"]}


def test_environment_names_settings_atrium_reads_and_shares_the_anchor_key(
        rendered: dict[str, dict[str, Any]]) -> None:
    env = container(rendered)["env"]
    names = [variable["name"] for variable in env]
    known = set(atrium_settings._CONFIG_KEYS)
    unknown = sorted(n for n in names if n.startswith("ATRIUM_") and n not in known)
    assert not unknown, f"settings Atrium does not read: {unknown}"
    assert {"ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL", "ATRIUM_STORAGE_URL",
            "ATRIUM_OIDC_ISSUER", "ATRIUM_AUDIT_ANCHOR_KEY"} <= set(names)
    # A $(NAME) in a value expands only to a variable defined above it.
    for index, variable in enumerate(env):
        for reference in re.findall(r"\$\(([A-Z0-9_]+)\)", variable.get("value", "")):
            assert reference in names[:index], f"{variable['name']} uses $({reference})"
    by_name = {variable["name"]: variable for variable in env}
    assert by_name["ORTHANC__POSTGRESQL__LOCK"]["value"] == "false"
    assert by_name["ATRIUM_DATABASE_URL"]["value"].startswith("postgresql://atrium_app:")
    mounts = {m["mountPath"]: m["name"] for m in container(rendered)["volumeMounts"]}
    anchor = Path(by_name["ATRIUM_AUDIT_ANCHOR_KEY"]["value"])
    assert str(anchor.parent) in mounts, "the anchoring key is not on a mounted volume"
    init = pod_spec(rendered)["initContainers"][0]
    assert str(anchor) in " ".join(init["command"]) and "-m 600" in " ".join(init["command"])
    data_dir = by_name["ATRIUM_DATA_DIR"]["value"]
    volumes = {v["name"]: v for v in pod_spec(rendered)["volumes"]}
    assert "emptyDir" in volumes[mounts[data_dir]], "each pod keeps its own data directory"


def test_the_orthanc_configuration_is_the_repositorys_with_the_values(
        rendered: dict[str, dict[str, Any]]) -> None:
    chart = json.loads(rendered["ConfigMap"]["data"]["atrium.json"])
    local = json.loads((ROOT / "orthanc-config" / "orthanc.json").read_text())
    # Requests reach the pods from the Service network, never from their loopback.
    assert chart.pop("RemoteAccessAllowed") is True
    local.pop("RemoteAccessAllowed")
    assert chart == local
    other = render(values(orthanc__aet="NORTH", atrium__aetOrganizations={"CT1": "North"},
                          atrium__trustedProxies=["10.42.0.0/16"]))
    chart = json.loads(other["ConfigMap"]["data"]["atrium.json"])
    assert chart["DicomAet"] == "NORTH" and chart["Atrium"]["AetOrganizations"] == {"CT1": "North"}
    assert chart["Atrium"]["TrustedProxies"] == ["10.42.0.0/16"]


def test_the_renderer_refuses_what_it_does_not_know() -> None:
    with pytest.raises(AssertionError):
        render_text("{{ include \"x\" . }}", values())
    with pytest.raises(AssertionError):
        render_text("{{ .Values.missing }}", values())
