"""Access control of the dashboard: the shared token, signed session cookies and CSRF tokens.

Flow step: in front of every page, stream, image and action. Two ways in:

* ``Authorization: Bearer <token>`` (scripts, probes of the API): no cookie, so no CSRF exposure;
* the login form (operator name + token) sets an HttpOnly, SameSite=Strict cookie holding the operator's name, an
  expiry and a random nonce, signed with HMAC-SHA256 under a key derived from the token. The token itself is never
  stored in the cookie, the page, the logs or the metrics. Actions from a cookie session must carry the session's
  CSRF token (``X-CSRF-Token``, an HMAC of the nonce, embedded in the page) and, when the browser sends one, an
  ``Origin`` that matches the page's host.

Rotating the token invalidates every session (the signing key derives from it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "ddad_session"
CSRF_HEADER = "x-csrf-token"
_ACTOR_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@- ")


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``actor`` goes into feedback records; ``nonce`` is None for bearer clients (no CSRF)."""

    actor: str
    nonce: str | None = None


def clean_actor(name: str) -> str:
    """An operator name safe for records and logs (letters, digits, ``._@-`` and spaces, at most 64)."""
    name = "".join(c for c in name.strip() if c in _ACTOR_CHARS)[:64].strip()
    if not name:
        raise ValueError("operator name is empty (letters, digits, '._@-' and spaces)")
    return name


class Authenticator:
    """Checks bearer tokens and issues / verifies session cookies and CSRF tokens.

    Example:
        >>> auth = Authenticator("0123456789abcdef-token", session_ttl_s=60)
        >>> cookie = auth.issue("alice")
        >>> p = auth.verify_cookie(cookie); p.actor
        'alice'
        >>> auth.check_csrf(p, auth.csrf_for(p)), auth.check_csrf(p, "forged")
        (True, False)
        >>> auth.verify_cookie(cookie[:-2] + "xx") is None
        True
    """

    def __init__(self, token: str, session_ttl_s: int = 12 * 3600) -> None:
        self._token = token.encode("utf-8")
        self._key = hmac.new(self._token, b"ddad-dashboard-session-v1", hashlib.sha256).digest()
        self.session_ttl_s = int(session_ttl_s)

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def check_bearer(self, header: str | None) -> Principal | None:
        """``Authorization: Bearer <token>`` -> a principal (actor ``api``), else None."""
        if not header or not header.lower().startswith("bearer "):
            return None
        given = header[7:].strip().encode("utf-8")
        return Principal("api") if hmac.compare_digest(given, self._token) else None

    def check_token(self, given: str) -> bool:
        """Constant-time comparison of a token typed into the login form."""
        return hmac.compare_digest(given.encode("utf-8"), self._token)

    def issue(self, actor: str, now: float | None = None) -> str:
        """A signed session cookie value for ``actor``."""
        exp = int((time.time() if now is None else now) + self.session_ttl_s)
        payload = json.dumps({"a": clean_actor(actor), "e": exp, "n": secrets.token_urlsafe(16)},
                             separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(payload)}"

    def verify_cookie(self, value: str | None, now: float | None = None) -> Principal | None:
        """The principal of a valid, unexpired cookie, else None."""
        if not value or value.count(".") != 1:
            return None
        body, sig = value.split(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(sig, self._sign(payload)) or not isinstance(data, dict):
            return None
        if float(data.get("e", 0)) < (time.time() if now is None else now):
            return None
        return Principal(str(data.get("a", "")), str(data.get("n", "")))

    def csrf_for(self, principal: Principal) -> str:
        """The CSRF token of a cookie session (deterministic per session, useless without the cookie)."""
        return self._sign(b"csrf:" + (principal.nonce or "").encode())

    def check_csrf(self, principal: Principal, given: str | None) -> bool:
        """Bearer clients need none; cookie sessions need their own token."""
        if principal.nonce is None:
            return True
        return bool(given) and hmac.compare_digest(given, self.csrf_for(principal))
