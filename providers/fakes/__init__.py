"""Loopback fakes of the real gateways, for tests and `loa demo --gateway ...`.

Each fake is a real server on 127.0.0.1 (port 0 by default) that answers as the
service documents: its paths, status codes, bodies and error codes.  Each one
records every request it receives, so tests can assert what reached the wire.
Each also runs on its own until Ctrl-C, printing its address and test
credentials: ``python -m providers.fakes.NAME --port N`` (0 for a free port).
"""

import signal


def stop_on_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) stop a fake run on its own, even when it was started with SIGINT
    ignored, as a non-interactive shell starts a background job (Python then leaves it so)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
