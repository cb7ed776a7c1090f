"""The web console for officials: pages rendered on the server, Vietnamese first.

Mounted under ``/console`` by :func:`install` (``/`` leads there).  Every page but the
sign-in page needs a session (:mod:`loa.web.console.session`); each shows and allows only
what the user's role and area allow, by the same engine functions and checks as the API and
the CLI (``loa.auth.require``, ``loa.approval``, ``loa.lifecycle``, ``loa.imports``,
``loa.report``).  Interactivity is htmx (vendored under ``static/``, with its licence): the
live SMS part counter, an import's progress and the campaigns' progress.  No page runs inline script.

==============================  =====================================================
``/console/``                   the dashboard: campaigns with their progress, paused
                                gateways
``/console/progress``           the progress table, polled every 5 s with an ETag
                                (:mod:`loa.web.console.progress`)
``/console/campaigns/NAME``     a campaign: versions and their diff, problems, preview,
                                the actions its state and the user's role allow
``.../NAME/messages``           its ledger, paged, numbers masked; one shown for a reason
                                to roles with personal-data access (audited)
``/console/campaigns/new``,     editing: the common fields with a live part counter, or
``.../NAME/edit``, ``/toml``    the TOML itself, validated before it is saved
``/console/reports/NAME``       the report per area (print-friendly), its CSV and HTML file
``/console/imports``            CSV uploads with their progress and rejects
``/console/gateways``,          for the roles that may see them
``users``, ``keys``, ``audit``
==============================  =====================================================
"""

from __future__ import annotations

from loa.web.console.pages import install

__all__ = ["install"]
