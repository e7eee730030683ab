"""What a scope lookup said, kept for a moment (atrium.api.scope.RecentlyVisible)."""

from __future__ import annotations

import types

from atrium.api.scope import RecentlyVisible, visible_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_its_seconds_then_asked_again() -> None:
    clock = Clock()
    recent: RecentlyVisible[str] = RecentlyVisible(seconds=2.0, clock=clock)
    recent.put("a", "row")
    clock.now += 1.9
    assert recent.get("a") == "row"
    clock.now += 0.1
    assert recent.get("a") is None


def test_clear_forgets_everything_whatever_the_bus_passes_it() -> None:
    recent: RecentlyVisible[str] = RecentlyVisible()
    recent.put("a", "row")
    recent.clear("3f1c2d7e-0000-4000-8000-000000000001")
    assert recent.get("a") is None


def test_a_full_cache_starts_over_rather_than_grow() -> None:
    recent: RecentlyVisible[int] = RecentlyVisible(capacity=3)
    for n in range(3):
        recent.put(n, n)
    recent.put(3, 3)
    assert [recent.get(n) for n in range(4)] == [None, None, None, 3]


def test_the_key_tells_organizations_and_phi_readers_apart() -> None:
    def caller(org: str, phi: bool) -> types.SimpleNamespace:
        return types.SimpleNamespace(organization_id=org, can_read_phi=phi)

    keys = {visible_key(caller(org, phi), "r1") for org in ("A", "B") for phi in (True, False)}
    assert len(keys) == 4
    assert visible_key(caller("A", True), "r1") != visible_key(caller("A", True), "r2")
