"""loa's HTTP side: gateway callbacks, opt-out replies, tracked links, arrivals, the report,
health and metrics.

A FastAPI application (:class:`Web`), served by uvicorn in ``loa serve``.  Routes:

=========================  ==========================================================
``POST|GET /hooks/NAME``   callbacks of gateway NAME: receipts and inbound SMS, verified
                           by the gateway's adapter (signature or token); forged -> 403
``GET /l/CODE``            a tracked link: records the click, redirects; forged -> 404
``POST /arrivals``         arrivals to greet, with the bearer token of
                           ``[serve] arrivals_token_env``
``GET /report``            the campaign report, as ``loa report`` makes it:
                           ``?campaign=NAME`` (default: the one run last), ``level=``,
                           ``format=html|csv|json`` (default html); aggregates only, open
                           unless ``[serve] report_token_env`` names a bearer token
``GET /healthz``           200 when the database answers, else 503
``GET /metrics``           Prometheus text format
``GET /openapi.json``      the OpenAPI 3.1 description of all of the above
=========================  ==========================================================

Under ``/api/v1`` (:mod:`loa.web.api`), with an API key: campaigns, runs, their status,
report and lifecycle actions, approval, definitions (apply, versions, diff, export),
preview and test sends, the emergency stop, imports, users, keys, the audit log,
gateways, and sign-in.

loa's own API endpoints (``/api/v1/...``, ``/arrivals``, ``/report``) answer an error as one JSON shape,
``{"error": {"code", "message", "field"}}``; a gateway callback answers what its gateway
expects.  An inbound "TC", "TU CHOI", "HUY" or "STOP" opts the number out at once and
sends one confirmation (:func:`loa.inbound.receive_inbound`, also the path of the
inbound SMS a dispatcher polls from an SMPP bind).
"""

from __future__ import annotations

from loa.web.app import MAX_BODY, REPORT_TYPES, Web
from loa.web.server import WebServer

__all__ = ["MAX_BODY", "REPORT_TYPES", "Web", "WebServer"]
