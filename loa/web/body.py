"""Request bodies, read whole but never past :data:`MAX_BODY`."""

from __future__ import annotations

from starlette.requests import Request

MAX_BODY = 1_000_000


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, exactly as sent (signatures cover it).

    Raises :class:`TooLarge` past ``limit`` bytes, :class:`ValueError` for a Content-Length
    that is not a number."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
