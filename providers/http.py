"""HTTP transport shared by the HTTP gateway adapters: one ``requests.Session`` per thread.

A gateway keeps connections alive (HTTP/1.1), so a sender thread that reuses its own
connection saves a TCP handshake (and a TLS one) per message.  One session shared by
all the sender threads would work too, but its pool holds 10 connections per host:
with more threads, connections beyond the tenth are opened and thrown away on every
call.  A session per thread keeps one warm connection per sender, and no thread waits
for another's.

A kept-alive connection can be closed by the gateway while it sits idle (every server
has an idle timeout).  urllib3 notices most of these before reusing the connection;
the rest fail as "connection aborted" once the request is written, and then nobody can
tell whether the gateway read it.  :meth:`Sessions.request` sends such a request again,
once, on a new connection, only where that cannot send a message twice: a method that
is idempotent (GET, HEAD...), or a gateway that deduplicates by our key (``resend``).
Otherwise the error goes up, and the adapter reports the send as ambiguous.
"""

from __future__ import annotations

import logging
import threading
from http.client import RemoteDisconnected
from typing import Any

import requests
from urllib3.exceptions import ProtocolError

log = logging.getLogger("loa.providers.http")

#: methods that a gateway must not act on twice: safe to send again
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_DROPPED = (RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def dropped(exc: BaseException) -> bool:
    """True for a connection that the other end closed under an accepted request
    (urllib3's "Connection aborted."), not one that could not be opened."""
    reason = exc.args[0] if isinstance(exc, requests.ConnectionError) and exc.args else exc
    if isinstance(reason, ProtocolError):
        inner = reason.args[1] if len(reason.args) > 1 else None
        return isinstance(inner, _DROPPED)
    return isinstance(reason, _DROPPED)


class Sessions:
    """One ``requests.Session`` per calling thread, each with :attr:`headers`.

    :meth:`close` closes every session made (the adapter's ``close()``); a session whose
    thread has ended is closed when the next one is made.
    """

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers: dict[str, str] = dict(headers or {})
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[tuple[threading.Thread, requests.Session]] = []
        self.closed = False

    def get(self) -> requests.Session:
        """This thread's session."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.headers)
            with self._lock:
                gone = [s for t, s in self._made if not t.is_alive()]
                self._made = [(t, s) for t, s in self._made if t.is_alive()]
                self._made.append((threading.current_thread(), session))
            for old in gone:
                old.close()
            self._local.session = session
        return session

    def request(self, method: str, url: str, *, resend: bool = False, **kw: Any) -> requests.Response:
        """``Session.request`` on this thread's session.  A request whose kept-alive
        connection was dropped under it is sent once more on a new connection when that
        is safe: an idempotent method, or ``resend`` (the gateway deduplicates by key)."""
        session = self.get()
        try:
            return session.request(method, url, **kw)
        except requests.ConnectionError as exc:
            if not (resend or method.upper() in IDEMPOTENT) or not dropped(exc):
                raise
            log.debug("%s %s: connection dropped (%s); sent again on a new connection", method, url, exc)
        return session.request(method, url, **kw)

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for _, session in made:
            session.close()
        self._local = threading.local()
        self.closed = True
