"""uvicorn serving loa's web application from a thread of ``loa serve`` (or of the demo)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

log = logging.getLogger("loa.web")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now: a taken port is an OSError here, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class WebServer:
    """One uvicorn server on ``sock`` (or on host:port), run by :meth:`run` until :meth:`stop`.

    uvicorn leaves the process's signals alone outside the main thread: ``loa serve``
    keeps its own SIGTERM/SIGHUP handling and stops this server from there.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None,
                 graceful: float = 10.0) -> None:
        import uvicorn

        self.socket = sock if sock is not None else bind(host, port)
        self.host, self.port = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none",
            proxy_headers=False,          # loa reads X-Forwarded-* itself, where it needs them (public_url)
            server_header=False, date_header=True, timeout_graceful_shutdown=graceful,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until :meth:`stop` (blocks: the body of a thread)."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, name: str = "loa-web") -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the requests in flight; wait for the thread :meth:`start` made."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout)
