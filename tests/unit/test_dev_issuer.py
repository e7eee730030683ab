"""The local dev issuer: its key file, its tokens, and ``atrium token``."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from atrium import cli
from atrium.auth.dev_issuer import (
    DEV_ISSUER,
    DevIssuerError,
    dev_subject,
    key_path,
    load_or_create,
)
from atrium.auth.principal import Permission
from atrium.auth.tokens import validator_for
from atrium.errors import Unauthorized
from atrium.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    env = {"ATRIUM_DATA_DIR": str(tmp_path / "data"),
           "ATRIUM_DATABASE_URL": "postgresql://atrium@127.0.0.1/atrium"}
    return load_settings({}, env, cwd=tmp_path)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment for ``atrium.cli.main``: a private data directory, no OIDC issuer."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("ATRIUM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ATRIUM_DATABASE_URL", "postgresql://atrium@127.0.0.1/atrium")
    monkeypatch.delenv("ATRIUM_OIDC_ISSUER", raising=False)
    monkeypatch.delenv("ATRIUM_OIDC_AUDIENCE", raising=False)
    monkeypatch.delenv("ATRIUM_ORG_CLAIM", raising=False)
    return data_dir


def test_the_key_is_created_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    path = key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    content = path.read_bytes()
    second = load_or_create(tmp_path)
    assert second.kid == first.kid and path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == ["dev-issuer.pem"]  # no temporary left


def test_processes_starting_together_end_up_with_one_key(tmp_path: Path) -> None:
    kids: list[str] = []
    start = threading.Barrier(6)

    def create() -> None:
        start.wait(timeout=10)
        kids.append(load_or_create(tmp_path).kid)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(kids) == 6 and len(set(kids)) == 1
    assert load_or_create(tmp_path).kid == kids[0]


def test_a_key_readable_by_others_is_tightened(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    key_path(tmp_path).chmod(0o644)
    load_or_create(tmp_path)
    assert stat.S_IMODE(key_path(tmp_path).stat().st_mode) == 0o600


def test_an_unreadable_key_file_names_itself_and_the_remedy(tmp_path: Path) -> None:
    key_path(tmp_path).parent.mkdir(parents=True)
    key_path(tmp_path).write_bytes(b"not a key")
    with pytest.raises(DevIssuerError, match=r"dev-issuer\.pem.*delete it"):
        load_or_create(tmp_path)


def test_dev_tokens_validate_through_the_same_validator(settings: Settings) -> None:
    token = load_or_create(settings.data_dir).mint("bob", ["researcher", "annotator"], "Lab B",
                                                   email="bob@example.org")
    principal = validator_for(settings).validate(f"Bearer {token}")
    assert principal.issuer == DEV_ISSUER == "atrium-dev"
    assert principal.keycloak_id == dev_subject("bob")
    assert (principal.username, principal.organization, principal.email) == \
        ("bob", "Lab B", "bob@example.org")
    assert principal.roles == {"researcher", "annotator"}
    assert principal.can(Permission.ANNOTATE) and not principal.can_read_phi


def test_a_token_of_another_data_directory_is_refused(settings: Settings, tmp_path: Path) -> None:
    foreign = load_or_create(tmp_path / "elsewhere").mint("eve", ["admin"], "Lab B")
    with pytest.raises(Unauthorized, match="unknown kid"):
        validator_for(settings).validate(foreign)


def test_the_same_user_keeps_the_same_subject(settings: Settings) -> None:
    issuer, check = load_or_create(settings.data_dir), validator_for(settings)
    first = check.validate(issuer.mint("carol", ["clinician"], "Lab C"))
    again = check.validate(issuer.mint("carol", ["admin"], "Lab C"))
    assert first.keycloak_id == again.keycloak_id != dev_subject("dave")


@pytest.mark.parametrize(("user", "roles", "org", "ttl", "words"), [
    ("", ["admin"], "Lab", 60, "non-empty"),
    ("ann", ["admin"], "  ", 60, "non-empty"),
    ("ann", ["superuser"], "Lab", 60, "superuser"),
    ("ann", [], "Lab", 60, "roles must be among"),
    ("ann", ["admin"], "Lab", 0, "ttl"),
    ("ann", ["admin"], "Lab", 10**9, "ttl"),
])
def test_mint_refuses_bad_arguments_with_a_sentence(tmp_path: Path, user: str, roles: list[str],
                                                    org: str, ttl: int, words: str) -> None:
    with pytest.raises(DevIssuerError, match=words):
        load_or_create(tmp_path).mint(user, roles, org, ttl=ttl)


# -- atrium token ----------------------------------------------------------------------


def test_atrium_token_prints_a_token_that_validates(cli_env: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["-q", "token", "--user", "alice", "--role", "clinician",
                       "--role", "auditor", "--org", "Hospital A", "--ttl", "120"])
    token = capsys.readouterr().out.strip()
    assert status == 0 and token.count(".") == 2
    settings = load_settings({}, {"ATRIUM_DATA_DIR": str(cli_env),
                                  "ATRIUM_DATABASE_URL": "postgresql://atrium@h/atrium"})
    principal = validator_for(settings).validate(token)
    assert principal.roles == {"clinician", "auditor"}
    assert principal.organization == "Hospital A" and principal.username == "alice"
    assert 100 < principal.expires_at - time.time() <= 120


def test_atrium_token_defaults_to_an_hour(cli_env: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    assert cli.main(["-q", "token", "--user", "a", "--role", "admin", "--org", "O"]) == 0
    token = capsys.readouterr().out.strip()
    settings = load_settings({}, {"ATRIUM_DATA_DIR": str(cli_env),
                                  "ATRIUM_DATABASE_URL": "postgresql://atrium@h/atrium"})
    claims = validator_for(settings).claims(token)
    assert claims["exp"] - claims["iat"] == 3600


def test_atrium_token_refuses_an_unknown_role(cli_env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "--user", "a", "--role", "superuser", "--org", "O"])
    assert exited.value.code == 2 and "superuser" in capsys.readouterr().err


def test_atrium_token_refuses_when_an_oidc_issuer_is_configured(
        cli_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ATRIUM_OIDC_ISSUER", "https://idp.example/realms/atrium")
    assert cli.main(["-q", "token", "--user", "a", "--role", "admin", "--org", "O"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "ATRIUM_OIDC_ISSUER" in captured.err
    assert not (cli_env / "keys").exists()


def test_atrium_token_reports_a_bad_ttl_in_one_line(cli_env: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", "token", "--user", "a", "--role", "admin", "--org", "O",
                     "--ttl", "-5"]) == 2
    assert capsys.readouterr().err.strip().startswith("atrium: ttl must be")
