"""Every API answer says where its time went (``Server-Timing``)."""

from __future__ import annotations

import re

import pytest
import requests

from tests.integration.conftest import AtriumUnderTest

pytestmark = pytest.mark.integration

PART = re.compile(r"^(\w+);dur=(\d+\.\d+)$")


def timings(answer: requests.Response) -> dict[str, float]:
    parts = [PART.match(item.strip()) for item in answer.headers["Server-Timing"].split(",")]
    assert all(parts), answer.headers["Server-Timing"]
    return {m[1]: float(m[2]) for m in parts if m}


def test_an_authenticated_answer_splits_token_route_and_audit(atrium: AtriumUnderTest) -> None:
    answer = requests.get(f"{atrium.url}/api/me", headers=atrium.auth("clinician"), timeout=10)
    assert answer.status_code == 200
    spent = timings(answer)
    assert set(spent) == {"auth", "app", "audit"}
    assert all(value >= 0 for value in spent.values())


def test_a_refused_answer_and_a_public_one_carry_it_too(atrium: AtriumUnderTest) -> None:
    refused = requests.get(f"{atrium.url}/api/me", timeout=10)
    assert refused.status_code == 401
    assert "auth" in timings(refused) and "audit" in timings(refused)
    public = requests.get(f"{atrium.url}/api/health", timeout=10)
    assert "app" in timings(public) and "audit" not in timings(public), "public: no audit row"
