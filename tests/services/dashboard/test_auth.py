"""Session cookies, CSRF tokens and bearer tokens of the dashboard (pure logic)."""

from __future__ import annotations

import pytest

from services.dashboard.auth import Authenticator, Principal, clean_actor

TOKEN = "0123456789abcdef-secret"


def test_cookie_round_trip_expiry_and_tampering():
    auth = Authenticator(TOKEN, session_ttl_s=60)
    cookie = auth.issue("alice", now=1000.0)
    assert TOKEN not in cookie
    p = auth.verify_cookie(cookie, now=1030.0)
    assert p.actor == "alice" and p.nonce
    assert auth.verify_cookie(cookie, now=1061.0) is None  # expired
    body, sig = cookie.split(".")
    assert auth.verify_cookie(body + "." + sig[::-1], now=1030.0) is None
    forged = Authenticator("another-token-of-16+", 60).issue("mallory", now=1000.0)
    assert auth.verify_cookie(forged, now=1030.0) is None  # signed under another token
    for junk in ("", "x", "a.b.c", "!!!.???"):
        assert auth.verify_cookie(junk) is None


def test_csrf_belongs_to_one_session_and_bearer_clients_need_none():
    auth = Authenticator(TOKEN)
    a, b = auth.verify_cookie(auth.issue("alice")), auth.verify_cookie(auth.issue("alice"))
    assert auth.check_csrf(a, auth.csrf_for(a)) and not auth.check_csrf(a, auth.csrf_for(b))
    assert not auth.check_csrf(a, None) and not auth.check_csrf(a, "")
    assert auth.check_csrf(Principal("api"), None)


def test_bearer_token():
    auth = Authenticator(TOKEN)
    assert auth.check_bearer(f"Bearer {TOKEN}") == Principal("api")
    for bad in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer wrong", f"Bearer {TOKEN}x"):
        assert auth.check_bearer(bad) is None


def test_operator_names_are_cleaned():
    assert clean_actor("  Alice O'Neil <script> ") == "Alice ONeil script"
    with pytest.raises(ValueError):
        clean_actor("<>")
