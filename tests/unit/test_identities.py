"""Users written from token claims: a user's first requests may race each other,
and only a real clash with another account is a 409."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from atrium.auth.guard import Identities
from atrium.auth.principal import Principal
from atrium.errors import Conflict

ORG_ID, USER_ID = uuid.uuid4(), uuid.uuid4()


class Database:
    """Answers the organization queries; the user upsert raises UniqueViolation
    the first ``violations`` times (a concurrent insert, or another account)."""

    def __init__(self, violations: int) -> None:
        self.violations = violations
        self.upserts = 0

    @contextlib.contextmanager
    def connect(self) -> Iterator[Database]:
        yield self

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def execute(self, query: str, params: Any = None) -> Any:
        self.last = query
        if "INSERT INTO users" in query:
            self.upserts += 1
            if self.upserts <= self.violations:
                raise psycopg.errors.UniqueViolation("duplicate key value")
        return self

    def fetchone(self) -> tuple[Any, ...]:
        if "INSERT INTO users" in self.last:
            return (USER_ID,)
        return (ORG_ID, False)


PRINCIPAL = Principal(keycloak_id="sub-1", username="ada", issuer="atrium-dev",
                      expires_at=0, roles=frozenset({"clinician"}), organization="Ward")


def test_a_race_with_the_users_own_first_request_is_retried() -> None:
    database = Database(violations=1)
    caller = Identities(database.connect).resolve(PRINCIPAL)
    assert (caller.user_id, caller.organization_id) == (USER_ID, ORG_ID)
    assert database.upserts == 2


def test_another_accounts_username_is_still_a_conflict() -> None:
    database = Database(violations=2)
    with pytest.raises(Conflict, match="Another account"):
        Identities(database.connect).resolve(PRINCIPAL)
    assert database.upserts == 2
