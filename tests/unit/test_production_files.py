"""The production files (Dockerfile, docker-compose.yml, docker/, .env.example,
LICENSE), checked statically: no Docker engine is needed, and each check names the
file and the entry that is wrong."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from atrium import settings as atrium_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
REALM_FILE = ROOT / "docker" / "keycloak" / "atrium-realm.json"
LICENSE = ROOT / "LICENSE"

SERVICES = {"orthanc", "balancer", "postgres", "minio", "keycloak", "ohif"}

# SPEC §7: the roles tokens carry in realm_access.roles, and the operator who
# reads the metrics (issue 14).
SPEC_ROLES = {"admin", "clinician", "researcher", "annotator", "ml-engineer", "auditor",
              "operator"}

# orthancteam/orthanc tag -> the Orthanc version it ships, from the image's
# release notes. A new tag must be added here with its Orthanc version before the
# Dockerfile may use it.
ORTHANCTEAM_TAGS = {
    "25.11.3": (1, 12, 10),
    "25.12.0": (1, 12, 10),
    "25.12.1": (1, 12, 10),
    "25.12.2": (1, 12, 10),
    "25.12.3": (1, 12, 10),
    "26.1.0": (1, 12, 10),
    "26.4.0": (1, 12, 11),
    "26.4.1": (1, 12, 11),
    "26.4.2": (1, 12, 11),
    "26.6.0": (1, 12, 11),
    "26.6.1": (1, 12, 11),
    "26.7.0": (1, 12, 11),
    "26.8.0": (1, 13, 0),
    "26.8.1": (1, 13, 0),
}
# Releases before it carry the 2026 DICOM-parser CVEs.
MINIMUM_ORTHANC = (1, 12, 11)

VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
ATRIUM_NAME_RE = re.compile(r"\bATRIUM_[A-Z0-9_]+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a YAML mapping"
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose.get("services") or {})


def port_mappings(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            yield name, port if isinstance(port, str) else json.dumps(port)


def bind_mount_sources(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    yield name, str(volume["source"])
                continue
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                yield name, source


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, arguments = stripped.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def known_setting_names() -> set[str]:
    return set(atrium_settings._CONFIG_KEYS)


def plugin_source_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "plugin").rglob("*.py"):
        names.update(ATRIUM_NAME_RE.findall(path.read_text()))
    return names


# --- docker-compose.yml ---------------------------------------------------------

def test_compose_has_the_six_services(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == SERVICES


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "build" in service:
            continue
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and "latest" not in tag, f"{name}: image {image!r}"


def test_compose_bind_mounts_and_build_context_exist(compose: dict[str, Any]) -> None:
    sources = list(bind_mount_sources(compose))
    assert sources, "no bind mount found: the realm export and configs must be mounted"
    for name, source in sources:
        assert (ROOT / source).exists(), f"{name}: bind mount source {source} is missing"
    for name, service in services(compose).items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context).is_dir(), f"{name}: build context {context} is missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile")
            assert (ROOT / context / dockerfile).is_file(), f"{name}: {dockerfile} missing"
        for env_file in service.get("env_file") or []:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (ROOT / path).is_file(), f"{name}: env_file {path} is missing"


def test_every_published_port_binds_loopback_by_default(compose: dict[str, Any]) -> None:
    mappings = list(port_mappings(compose))
    assert mappings, "no published port at all"
    loopback = re.compile(r"^(127\.0\.0\.1|\$\{[A-Z0-9_]*_BIND:-127\.0\.0\.1\}):")
    for name, mapping in mappings:
        assert loopback.match(mapping), f"{name}: port {mapping!r} is not bound to loopback"


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    # orthanc's is the Dockerfile's HEALTHCHECK, which compose uses as is.
    dockerfile_health = any(i == "HEALTHCHECK" for i, _ in dockerfile_instructions())
    for name, service in services(compose).items():
        has_own = "healthcheck" in service
        assert has_own or ("build" in service and dockerfile_health), f"{name}: no healthcheck"


def test_orthanc_waits_for_its_dependencies(compose: dict[str, Any]) -> None:
    depends = services(compose)["orthanc"].get("depends_on") or {}
    for dependency in ("postgres", "minio", "keycloak"):
        assert depends.get(dependency, {}).get("condition") == "service_healthy", dependency


def test_compose_atrium_variables_are_settings_atrium_reads(compose: dict[str, Any]) -> None:
    known = known_setting_names()
    assert "ATRIUM_DATABASE_URL" in known  # the list itself was found
    used = set(ATRIUM_NAME_RE.findall(COMPOSE_FILE.read_text()))
    environment = services(compose)["orthanc"].get("environment") or {}
    assert {"ATRIUM_DATABASE_URL", "ATRIUM_STORAGE_URL", "ATRIUM_OIDC_ISSUER"} <= set(environment)
    unknown = sorted(used - known)
    assert not unknown, f"ATRIUM_* names settings.py does not read: {unknown}"


def test_every_compose_variable_is_in_env_example() -> None:
    used = set(VARIABLE_RE.findall(COMPOSE_FILE.read_text()))
    assert used, "docker-compose.yml uses no variable: secrets would be hard-coded"
    listed = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    missing = sorted(used - listed)
    assert not missing, f".env.example lacks {missing}"


def test_secrets_are_required_not_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    for secret in ("POSTGRES_PASSWORD", "PG_ORTHANC_PASSWORD", "PG_ATRIUM_PASSWORD",
                   "PG_ATRIUM_APP_PASSWORD",
                   "MINIO_ROOT_PASSWORD", "KEYCLOAK_ADMIN_PASSWORD"):
        references = re.findall(r"\$\{" + secret + r"(:?[?-])?", text)
        assert references, f"{secret} is not used"
        assert all(ref in (":?", "?") for ref in references), f"{secret} has a default"


def compose_default(value: str) -> str:
    """A compose value with each ``${NAME:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def atrium_setting(compose: dict[str, Any], name: str) -> str:
    """``name`` as the stack's Atrium services set it (with its defaults): one value."""
    values = {compose_default(str(env[name])) for service in services(compose).values()
              if isinstance(env := service.get("environment"), dict) and name in env}
    assert len(values) == 1, f"{name}: {sorted(values)}"
    return values.pop()


def test_ohif_runs_atriums_ohif_release_with_atriums_generated_configuration(
        compose: dict[str, Any]) -> None:
    """docker/ohif/app-config.js is what Atrium's generator makes for the stack's
    issuer and client (ATRIUM_OIDC_ISSUER, ATRIUM_OIDC_AUDIENCE of Atrium's service):
    regenerate it with the command its first line names."""
    from atrium.viewer.config import standalone_app_config_script
    from atrium.viewer.install import OHIF_VERSION

    ohif = services(compose)["ohif"]
    assert ohif["image"] == f"ohif/app:v{OHIF_VERSION}"
    committed = ROOT / "docker" / "ohif" / "app-config.js"
    assert any(str(volume).startswith("./docker/ohif/app-config.js:/usr/share/nginx/html/"
                                      "app-config.js") for volume in ohif["volumes"])
    expected = standalone_app_config_script(
        issuer=atrium_setting(compose, "ATRIUM_OIDC_ISSUER"),
        client_id=atrium_setting(compose, "ATRIUM_OIDC_AUDIENCE"))
    assert committed.read_text() == expected, (
        "docker/ohif/app-config.js is not the generator's output: run the command in "
        "its first line")
    # Its nginx forwards /dicom-web/ and /api/ to a service of the stack it waits for.
    template = (ROOT / "docker" / "ohif" / "default.conf.template").read_text()
    upstream = re.search(r"proxy_pass http://([A-Za-z0-9_-]+):8042;", template)
    assert upstream is not None
    assert upstream.group(1) in services(compose)
    assert upstream.group(1) in ohif["depends_on"]


# --- several Orthanc + Atrium replicas behind the balancer (docs/DEPLOYMENT.md) ------

HAPROXY_CFG = ROOT / "docker" / "haproxy" / "haproxy.cfg"


def haproxy_sections() -> dict[str, list[str]]:
    """'backend orthanc_http' -> its directive lines, comments dropped."""
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in HAPROXY_CFG.read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        if line[0].isspace():
            current.append(stripped)
        else:
            current = result.setdefault(stripped, [])
    return result


def test_orthanc_scales_without_host_ports(compose: dict[str, Any]) -> None:
    orthanc = services(compose)["orthanc"]
    assert int(orthanc["deploy"]["replicas"]) >= 2
    assert "ports" not in orthanc, "a published port would clash between replicas"
    assert "container_name" not in orthanc, "a fixed name cannot be scaled"
    assert {"8042", "4242"} <= {str(port) for port in orthanc.get("expose") or []}


def test_each_replica_keeps_its_own_data_dir_and_shares_the_anchor_key(
        compose: dict[str, Any]) -> None:
    orthanc = services(compose)["orthanc"]
    environment = orthanc["environment"]
    mounts = [str(volume).split(":")[1] for volume in orthanc["volumes"]]
    data_dir = environment["ATRIUM_DATA_DIR"]
    assert not any(data_dir.startswith(mount) for mount in mounts), \
        "the node-local data directory is on a volume every replica shares"
    anchor_key = environment["ATRIUM_AUDIT_ANCHOR_KEY"]
    assert any(anchor_key.startswith(mount + "/") for mount in mounts), \
        "the audit anchoring key must be on the shared volume"


def test_the_balancer_owns_the_published_ports(compose: dict[str, Any]) -> None:
    balancer = services(compose)["balancer"]
    published = {mapping.rsplit(":", 1)[1] for mapping in balancer["ports"]}
    assert published == {"8042", "4242"}
    assert balancer["depends_on"]["orthanc"]["condition"] == "service_healthy"
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in balancer["volumes"]}
    assert mounts.get("./docker/haproxy/haproxy.cfg") == "/usr/local/etc/haproxy/haproxy.cfg"
    assert "/api/health" in " ".join(balancer["healthcheck"]["test"])


def test_haproxy_spreads_http_and_dicom_over_healthy_replicas() -> None:
    config = haproxy_sections()
    frontends = {name: lines for name, lines in config.items() if name.startswith("frontend")}
    binds = {line for lines in frontends.values() for line in lines if line.startswith("bind")}
    assert binds == {"bind :8042", "bind :4242"}
    assert "http-request del-header X-Atrium-Internal" in config["frontend http"]
    http, dicom = config["backend orthanc_http"], config["backend orthanc_dicom"]
    assert "balance roundrobin" in http and "balance leastconn" in dicom
    assert "mode tcp" in dicom
    for backend in (http, dicom):
        assert "option httpchk" in backend
        assert "http-check send meth GET uri /api/health" in backend
        assert "http-check expect status 200" in backend
    templates = [line.split() for line in http + dicom if line.startswith("server-template")]
    assert [t[3:] for t in templates] == [["orthanc:8042"], ["orthanc:4242", "port", "8042"]]
    defaults = " ".join(config["defaults"])
    assert "resolvers docker" in defaults and " check " in f" {defaults} "
    assert "nameserver dns 127.0.0.11:53" in config["resolvers docker"]


def test_replicas_trust_forwarded_addresses_from_their_own_network_only(
        compose: dict[str, Any]) -> None:
    # The balancer appends each client's address; the replicas, which publish no
    # port, trust it from the compose network's subnet and from nowhere else.
    assert "option forwardfor" in haproxy_sections()["frontend http"]
    trusted = services(compose)["orthanc"]["environment"]["ATRIUM_TRUSTED_PROXIES"]
    subnets = [entry["subnet"] for entry in compose["networks"]["default"]["ipam"]["config"]]
    assert subnets == [trusted] == ["${COMPOSE_NETWORK_SUBNET:-172.28.0.0/16}"]
    assert "ports" not in services(compose)["orthanc"]


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="HAProxy is not installed (scripts/bootstrap.sh --test installs it)")
def test_haproxy_accepts_the_compose_configuration(tmp_path: Path) -> None:
    # `orthanc` resolves inside the compose network only; here a look-up would just
    # wait for the DNS server, so the copy checked starts its servers unresolved.
    text = HAPROXY_CFG.read_text()
    assert text.count("init-addr last,libc,none") == 1
    config = tmp_path / "haproxy.cfg"
    config.write_text(text.replace("init-addr last,libc,none", "init-addr none"))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True,
                             text=True, check=False, timeout=60)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "WARNING" not in checked.stderr + checked.stdout, checked.stderr


# --- Dockerfile -------------------------------------------------------------------

def test_dockerfile_base_is_a_pinned_orthancteam_release_without_the_2026_cves() -> None:
    bases = [args.split()[-1] for i, args in dockerfile_instructions() if i == "FROM"]
    assert len(bases) == 1, bases
    image, _, tag = bases[0].partition(":")
    assert image == "orthancteam/orthanc", bases[0]
    assert tag and tag != "latest", "the base image must be pinned"
    assert tag in ORTHANCTEAM_TAGS, f"unknown tag {tag}: add it with its Orthanc version"
    assert ORTHANCTEAM_TAGS[tag] >= MINIMUM_ORTHANC, f"{tag} ships an Orthanc before 1.12.11"


def test_dockerfile_copy_sources_exist() -> None:
    copies = [args for i, args in dockerfile_instructions() if i == "COPY"]
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_dockerfile_wires_the_entry_script_venv_and_migrations() -> None:
    env = " ".join(args for i, args in dockerfile_instructions() if i == "ENV")
    expected = {
        "ORTHANC__PYTHON_SCRIPT": "/opt/atrium/plugin/atrium_entry.py",
        "ATRIUM_VENV": "/opt/atrium/.venv",
        "ATRIUM_SQL_DIR": "/opt/atrium/sql",
    }
    for name, value in expected.items():
        assert f"{name}={value}" in env, name
    assert (ROOT / "plugin" / "atrium_entry.py").is_file()
    read_by_plugin = plugin_source_names()
    for name in ATRIUM_NAME_RE.findall(env):
        assert name in read_by_plugin, f"the Dockerfile sets {name}, which nothing reads"


def test_dockerfile_runs_unprivileged_with_health_check_and_ports() -> None:
    instructions = dockerfile_instructions()
    users = [args for i, args in instructions if i == "USER"]
    assert users and users[-1] not in {"root", "0"}, users
    health = [args for i, args in instructions if i == "HEALTHCHECK"]
    assert health and "http://localhost:8042/api/health" in health[0]
    exposed = {p for i, args in instructions if i == "EXPOSE" for p in args.split()}
    assert {"8042", "4242"} <= exposed


# --- Keycloak realm ---------------------------------------------------------------

@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    document = json.loads(REALM_FILE.read_text())
    assert isinstance(document, dict)
    return document


def client(realm: dict[str, Any], client_id: str) -> dict[str, Any]:
    matches = [c for c in realm.get("clients", []) if c.get("clientId") == client_id]
    assert len(matches) == 1, f"client {client_id}: {len(matches)} found"
    return matches[0]


def test_realm_is_atrium_and_enabled(realm: dict[str, Any]) -> None:
    assert realm.get("realm") == "atrium" and realm.get("enabled") is True


def test_realm_roles_are_exactly_the_spec_roles(realm: dict[str, Any]) -> None:
    names = {role["name"] for role in realm.get("roles", {}).get("realm", [])}
    assert names == SPEC_ROLES


def test_realm_client_atrium_puts_audience_organization_and_roles_in_tokens(
    realm: dict[str, Any],
) -> None:
    atrium = client(realm, "atrium")
    assert atrium.get("standardFlowEnabled") and atrium.get("directAccessGrantsEnabled")
    assert "http://localhost:3000/*" in atrium.get("redirectUris", [])
    by_type: dict[str, list[dict[str, str]]] = {}
    for mapper in atrium.get("protocolMappers", []):
        by_type.setdefault(mapper["protocolMapper"], []).append(mapper.get("config", {}))
    audiences = [
        c.get("included.client.audience") or c.get("included.custom.audience")
        for c in by_type.get("oidc-audience-mapper", [])
        if c.get("access.token.claim") == "true"
    ]
    assert "atrium" in audiences
    organization = [
        c for c in by_type.get("oidc-usermodel-attribute-mapper", [])
        if c.get("user.attribute") == "organization"
    ]
    assert organization and organization[0].get("claim.name") == "organization"
    assert organization[0].get("access.token.claim") == "true"
    roles = by_type.get("oidc-usermodel-realm-role-mapper", [])
    assert roles and roles[0].get("claim.name") == "realm_access.roles"


def test_both_viewers_sign_in_with_atriums_client_by_pkce(
        realm: dict[str, Any], compose: dict[str, Any]) -> None:
    """Compose's OHIF (port 3000) and Atrium's own /viewer/ (port 8042) use the
    client Atrium's configuration names, public, with PKCE (S256)."""
    viewer = client(realm, atrium_setting(compose, "ATRIUM_OIDC_AUDIENCE"))
    assert viewer.get("publicClient") is True and viewer.get("standardFlowEnabled")
    assert not viewer.get("implicitFlowEnabled")
    attributes = viewer.get("attributes", {})
    assert attributes.get("pkce.code.challenge.method") == "S256"
    logout = attributes.get("post.logout.redirect.uris", "").split("##")
    for origin, path in (("http://localhost:3000", "/*"),
                         ("http://localhost:8042", "/viewer/*"),
                         ("http://127.0.0.1:8042", "/viewer/*")):
        assert origin + path in viewer.get("redirectUris", []), origin
        assert origin + path in logout, origin
        assert origin in viewer.get("webOrigins", []), origin
    # One client for every viewer: no second one to keep in step.
    others = [c["clientId"] for c in realm.get("clients", []) if c is not viewer and any(
        ":3000/" in uri or "/viewer/" in uri for uri in c.get("redirectUris", []))]
    assert others == []


def test_user_profile_declares_organization_editable_by_admins_only(
    realm: dict[str, Any],
) -> None:
    providers = realm["components"]["org.keycloak.userprofile.UserProfileProvider"]
    profile = json.loads(providers[0]["config"]["kc.user.profile.config"][0])
    attributes = {a["name"]: a for a in profile["attributes"]}
    assert {"username", "email", "firstName", "lastName"} <= set(attributes)
    organization = attributes["organization"]
    assert organization["permissions"]["edit"] == ["admin"]


def test_realm_holds_no_credentials(realm: dict[str, Any]) -> None:
    text = REALM_FILE.read_text()
    assert not realm.get("users"), "users belong in Keycloak, not in the export"
    assert '"secret"' not in text and '"credentials"' not in text


# --- LICENSE ----------------------------------------------------------------------

def test_license_is_the_full_agpl_v3() -> None:
    text = LICENSE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[:2] == ["GNU AFFERO GENERAL PUBLIC LICENSE", "Version 3, 19 November 2007"]
    assert len(text) > 33_000, "the licence text is truncated"
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text
    assert text.rstrip().endswith("<https://www.gnu.org/licenses/>.")


def test_the_dicomweb_plugin_answers_only_under_a_private_root() -> None:
    """Atrium serves /dicom-web/ itself (the gateway); the plugin must not."""
    from atrium.settings import dicomweb_plugin_root

    local = json.loads((ROOT / "orthanc-config" / "orthanc.json").read_text())
    private = dicomweb_plugin_root(local)
    assert private != "/dicom-web/"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ORTHANC__DICOM_WEB__ROOT={private}" in dockerfile
    assert "DICOM_WEB__ROOT" not in COMPOSE_FILE.read_text()  # nothing overrides it
