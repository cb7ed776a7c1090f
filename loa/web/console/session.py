"""Sessions, CSRF tokens and security headers of the console.

A session is a cookie that the server signs (HMAC-SHA256): the user's name, the language
at sign-in, when it was issued, and a random nonce.  The user is read again from the database
on each request (:func:`loa.auth.principal_and_language`), so a disabled user, a changed role
or a changed language (``users.language``) takes effect at once.  Sessions last :data:`LIFETIME`; signing out clears the cookie.

The signing key is ``$LOA_CONSOLE_SECRET`` (set it when several processes serve the console,
so that they accept each other's sessions); without it each process draws its own, and
sessions end when it restarts.

Forms carry a CSRF token: the HMAC of a random cookie (double submit, signed), checked on
every POST.  Cookies are ``Secure``, ``HttpOnly`` and ``SameSite=Strict``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

SESSION = "loa_session"
CSRF = "loa_csrf"
FLASH = "loa_flash"
LIFETIME = 8 * 3600          # seconds
SECRET_ENV = "LOA_CONSOLE_SECRET"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    user: str
    lang: str
    issued: float
    nonce: str          # names the session, for signing out (loa.web.console.signout)


class Signer:
    """Signs and checks the console's cookies with one key."""

    def __init__(self, secret: str | None = None) -> None:
        raw = secret if secret is not None else os.environ.get(SECRET_ENV, "")
        self.key = hashlib.sha256(raw.encode()).digest() if raw else secrets.token_bytes(32)

    def _mac(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self.key, f"{purpose}\x00{payload}".encode(), hashlib.sha256).digest())

    def sign(self, purpose: str, value: dict[str, object]) -> str:
        payload = _b64(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def unsign(self, purpose: str, token: str | None) -> dict[str, object] | None:
        if not token or "." not in token:
            return None
        payload, mac = token.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        try:
            value = json.loads(_unb64(payload))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # -- sessions ----------------------------------------------------------------------
    def session_cookie(self, user: str, lang: str, nonce: str | None = None) -> str:
        """A new session's cookie; with ``nonce``, the same session's (its language changed)."""
        return self.sign(SESSION, {"u": user, "l": lang, "t": time.time(), "n": nonce or secrets.token_hex(16)})

    def session(self, cookie: str | None) -> Session | None:
        value = self.unsign(SESSION, cookie)
        if value is None:
            return None
        issued = value.get("t")
        if not isinstance(issued, (int, float)) or not 0 <= time.time() - issued < LIFETIME:
            return None
        user, lang, nonce = value.get("u"), value.get("l"), value.get("n")
        if not isinstance(user, str) or not isinstance(lang, str) or not isinstance(nonce, str) or not nonce:
            return None
        return Session(user, lang, float(issued), nonce[:32])

    # -- CSRF ----------------------------------------------------------------------------
    def csrf_token(self, cookie: str) -> str:
        return self._mac(CSRF, cookie)

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(self.csrf_token(str(cookie)), str(token))


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csp(nonce: str) -> str:
    """No script but the console's own files (and a nonced one, if a page ever needs it)."""
    return ("default-src 'self'; script-src 'self' 'nonce-" + nonce + "'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
           "Cache-Control": "no-store"}

__all__ = ["CSRF", "FLASH", "HEADERS", "LIFETIME", "SESSION", "Session", "Signer", "csp", "new_csrf_cookie"]
