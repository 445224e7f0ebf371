"""The dashboard: sync health of every tech and connection at a glance."""

from __future__ import annotations

from flask import Blueprint

from admin import health
from admin.panel import Panel, page
from admin.web_session import login_required


def register(bp: Blueprint, panel: Panel) -> None:
    @bp.get("/")
    @login_required
    def dashboard():  # type: ignore[no-untyped-def]
        rows = health.dashboard(panel.database)
        counts = {state: sum(1 for r in rows if r.state == state)
                  for state in ("ok", "degraded", "needs_reauth", "not_connected")}
        return page("dashboard.html", rows=rows, counts=counts, age=health.human_age)
