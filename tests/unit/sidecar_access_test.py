"""The caller verifier's own bookkeeping, with a clock the test moves: how many TokenReviews a
flood of made-up tokens can cause, that a refused token is not asked about again, and that known
callers are not locked out by a flood (the live-lab side is tests/e2e/test_security.py)."""
from __future__ import annotations

import pytest

from sidecar.errors import TooManyRequests, Unauthenticated
from sidecar.ops.access import (
    CACHE_S,
    KNOWN_TOKEN_S,
    NEGATIVE_CACHE_S,
    Caller,
    CallerVerifier,
    Permission,
)

GOOD = {"good-1": Caller("alice", "u1", ("devs",)), "good-2": Caller("bob", "u2", ())}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Api:
    """Counts the TokenReviews the verifier makes."""

    def __init__(self) -> None:
        self.reviews: list[str] = []

    def read_token(self, token: str) -> Caller | None:
        self.reviews.append(token)
        return GOOD.get(token)

    def review(self, caller: Caller, namespace: str, permission: Permission) -> tuple[bool, str]:
        return True, ""


def _verifier(clock: Clock, api: Api, per_minute: int = 10) -> CallerVerifier:
    return CallerVerifier(api.read_token, api.review, clock=clock,
                          new_tokens_per_minute=per_minute)


def _auth(verifier: CallerVerifier, token: str) -> str:
    try:
        access = verifier.authenticate({"authorization": f"Bearer {token}"})
    except TooManyRequests:
        return "429"
    except Unauthenticated:
        return "401"
    return access.caller.username if access.caller else "?"


def test_a_flood_of_made_up_tokens_costs_at_most_the_rate(clock: Clock) -> None:
    api = Api()
    verifier = _verifier(clock, api, per_minute=10)
    answers = [_auth(verifier, f"made-up-{i}") for i in range(100)]
    assert answers.count("401") == 10 and answers.count("429") == 90
    assert len(api.reviews) == 10
    clock.now += 6  # one more a 6 s
    assert [_auth(verifier, f"later-{i}") for i in range(3)] == ["401", "429", "429"]
    assert len(api.reviews) == 11


def test_too_many_says_when_to_come_back(clock: Clock) -> None:
    verifier = _verifier(clock, Api(), per_minute=1)
    _auth(verifier, "first")
    with pytest.raises(TooManyRequests) as refused:
        verifier.authenticate({"authorization": "Bearer second"})
    assert (refused.value.headers or {}).get("Retry-After") == "60"


def test_a_refused_token_is_not_asked_about_again_for_a_while(clock: Clock) -> None:
    api = Api()
    verifier = _verifier(clock, api)
    assert [_auth(verifier, "stolen-and-revoked") for _ in range(50)] == ["401"] * 50
    assert api.reviews == ["stolen-and-revoked"]
    clock.now += NEGATIVE_CACHE_S + 1
    assert _auth(verifier, "stolen-and-revoked") == "401"
    assert len(api.reviews) == 2


def test_known_callers_are_not_locked_out_by_a_flood(clock: Clock) -> None:
    api = Api()
    verifier = _verifier(clock, api, per_minute=10)
    assert _auth(verifier, "good-1") == "alice"
    assert [_auth(verifier, f"made-up-{i}") for i in range(50)].count("429") == 41
    # within its cache: not asked again
    assert _auth(verifier, "good-1") == "alice"
    assert api.reviews.count("good-1") == 1
    # its cache over, the bucket empty: asked again (it may have been revoked), not limited
    clock.now += CACHE_S + 1
    [_auth(verifier, f"flood-1-{i}") for i in range(5)]
    assert _auth(verifier, "good-1") == "alice"
    assert api.reviews.count("good-1") == 2
    # a caller never seen before waits like any new token
    assert _auth(verifier, "good-2") == "429"
    # an hour later alice counts as new again
    clock.now += KNOWN_TOKEN_S + 1
    [_auth(verifier, f"flood-2-{i}") for i in range(20)]
    assert _auth(verifier, "good-1") == "429"


def test_a_token_revoked_after_it_was_known_is_new_again(clock: Clock) -> None:
    api = Api()
    verifier = _verifier(clock, api, per_minute=10)
    assert _auth(verifier, "good-1") == "alice"
    del GOOD["good-1"]
    try:
        clock.now += CACHE_S + 1
        assert _auth(verifier, "good-1") == "401"  # asked, refused
        clock.now += NEGATIVE_CACHE_S + 1
        [_auth(verifier, f"made-up-{i}") for i in range(20)]
        assert _auth(verifier, "good-1") == "429"  # no longer skips the limit
    finally:
        GOOD["good-1"] = Caller("alice", "u1", ("devs",))
