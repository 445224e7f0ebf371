"""The audit log and the notifications (with their email/webhook deliveries when configured)."""

from __future__ import annotations

from flask import Blueprint, request
from sqlalchemy import select

from admin import audit
from admin.panel import Panel, page
from admin.web_session import login_required
from server import notify
from server.models import Notification


def register(bp: Blueprint, panel: Panel) -> None:
    @bp.get("/audit")
    @login_required
    def audit_log():  # type: ignore[no-untyped-def]
        actor = request.args.get("actor") or None
        return page("audit.html", entries=audit.recent(panel.database, limit=300, actor=actor), actor=actor)

    @bp.get("/notifications")
    @login_required
    def notifications():  # type: ignore[no-untyped-def]
        audience = request.args.get("audience", "dispatcher")
        if audience not in ("dispatcher", "tech"):
            audience = "dispatcher"
        with panel.database.read() as session:
            rows = list(session.scalars(select(Notification).where(Notification.audience == audience)
                                        .order_by(Notification.created_at.desc(), Notification.id.desc())
                                        .limit(200)))
        listing = getattr(notify, "deliveries", None)  # delivery channels, when this server has them
        deliveries = listing(panel.database, 100) if listing is not None else None
        return page("notifications.html", notifications=rows, audience=audience, deliveries=deliveries)
