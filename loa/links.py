"""Tracked links: ``{{ link }}`` in a template becomes a short URL per message.

``https://PUBLIC_URL/l/CODE`` records a click for that message and redirects to
the campaign's ``link`` target.  CODE is the outbox id in base 62 followed by a
truncated HMAC of it, keyed with ``$LOA_LINK_SECRET``, so a code cannot be
guessed or forged: anything else gets 404.  No third party sees the clicks.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import string

from loa.errors import ConfigError

ALPHABET = string.digits + string.ascii_letters
SIGNATURE_LENGTH = 6            # 62^6 ≈ 5.7e10 guesses per message: short enough for SMS
SECRET_ENV = "LOA_LINK_SECRET"


def _secret() -> bytes:
    value = os.environ.get(SECRET_ENV, "")
    if len(value) < 16:
        raise ConfigError(f"tracked links need ${SECRET_ENV} (at least 16 characters) to sign their codes")
    return value.encode()


def _b62(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 62)
        out = ALPHABET[r] + out
        if n == 0:
            return out


def _unb62(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 62 + ALPHABET.index(ch)
    return n


def _signature(body: str, secret: bytes) -> str:
    digest = int.from_bytes(hmac.new(secret, body.encode(), hashlib.sha256).digest()[:8], "big")
    return _b62(digest)[-SIGNATURE_LENGTH:].rjust(SIGNATURE_LENGTH, "0")


def code_for(outbox_id: int) -> str:
    body = _b62(outbox_id)
    return body + _signature(body, _secret())


def outbox_id(code: str) -> int | None:
    """The message a code stands for, or None if it is malformed or forged."""
    if not (SIGNATURE_LENGTH < len(code) <= SIGNATURE_LENGTH + 12) or any(ch not in ALPHABET for ch in code):
        return None
    body, signature = code[:-SIGNATURE_LENGTH], code[-SIGNATURE_LENGTH:]
    if not hmac.compare_digest(signature, _signature(body, _secret())):
        return None
    return _unb62(body)


def url_for(public_url: str, outbox_id_: int) -> str:
    if not public_url:
        raise ConfigError("tracked links need [serve] public_url, the address `loa serve` is reached at")
    return f"{public_url.rstrip('/')}/l/{code_for(outbox_id_)}"
