"""A tech's calendar accounts: connect (real OAuth flows / a remote CalDAV account), choose
calendars and the bookings target, sync now, disconnect."""

from __future__ import annotations

from typing import Any, Callable

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select

from admin.panel import Panel, page
from admin.web_session import login_required
from server import connections as connect_service
from server import sync_admin
from server.connections import ConnectError
from server.models import Connection, RemoteCalendarRow, Tech
from server.techs import AdminError

PROVIDER_LABELS = {"google": "Google", "microsoft": "Outlook", "caldav": "CalDAV account"}
SELECTIONS = {"primary": "Primary calendar only", "busy": "Every calendar marked busy",
              "chosen": "The calendars ticked below"}


def caldav_connector() -> Callable[..., Any] | None:
    """The remote-CalDAV connect service function (server.connections.connect_caldav), when present."""
    return getattr(connect_service, "connect_caldav", None)


def oauth_ready(panel: Panel, provider: str) -> str:
    """"" when the provider's connect flow can run here, else why not (for a disabled button)."""
    if provider not in connect_service.OAUTH_PROVIDERS:
        return f"{PROVIDER_LABELS[provider]} is not available in this version."
    if not panel.config.get(provider, "client_id"):
        return f"Set [{provider}] client_id and client_secret in the configuration first."
    return ""


def register(bp: Blueprint, panel: Panel) -> None:
    def tech_or_404(username: str) -> Tech:
        with panel.database.read() as session:
            tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            abort(404)
        return tech

    def show(username: str, status: int = 200, **extra: Any):  # type: ignore[no-untyped-def]
        tech = tech_or_404(username)
        with panel.database.read() as session:
            rows = list(session.scalars(select(Connection).where(Connection.tech_id == tech.id)
                                        .order_by(Connection.provider)))
            calendars = {c.id: list(session.scalars(select(RemoteCalendarRow).where(
                RemoteCalendarRow.connection_id == c.id).order_by(RemoteCalendarRow.primary.desc(),
                                                                  RemoteCalendarRow.name))) for c in rows}
        buttons = {p: oauth_ready(panel, p) for p in ("google", "microsoft")}
        caldav_note = "" if caldav_connector() else (
            "Remote CalDAV accounts (iCloud, Fastmail, Nextcloud) are not available in this version yet.")
        return page("connections.html", status, tech=tech, connections=rows, calendars=calendars,
                    buttons=buttons, caldav_note=caldav_note, labels=PROVIDER_LABELS,
                    selections=SELECTIONS, **extra)

    @bp.get("/techs/<username>/connections")
    @login_required
    def tech_connections(username: str):  # type: ignore[no-untyped-def]
        return show(username)

    @bp.post("/techs/<username>/connect/<provider>")
    @login_required
    def tech_connect(username: str, provider: str):  # type: ignore[no-untyped-def]
        tech_or_404(username)
        if provider not in PROVIDER_LABELS or provider == "caldav":
            abort(404)
        try:
            link = connect_service.create_consent_link(panel.database, panel.config, username, provider)
        except (ConnectError, AdminError) as exc:
            return show(username, 400, error=str(exc))
        panel.audit("connection.link", username, f"{provider} consent link created")
        if request.form.get("mode") == "link":  # to send to the tech, who signs in on their own device
            return show(username, consent_link=link, consent_provider=PROVIDER_LABELS[provider])
        return redirect(link, 303)  # the person at this browser signs in now

    @bp.post("/techs/<username>/connect/caldav")
    @login_required
    def tech_connect_caldav(username: str):  # type: ignore[no-untyped-def]
        tech_or_404(username)
        connector = caldav_connector()
        if connector is None:
            return show(username, 400, error="Remote CalDAV accounts are not available in this version yet.")
        url = request.form.get("url", "").strip()
        account = request.form.get("account", "").strip()
        password = request.form.get("password", "")
        if len(url) > 2000 or len(account) > 200 or len(password) > 1000:
            return show(username, 400, error="The URL, user name or password is too long.")
        if not url.startswith(("https://", "http://")) or not account or not password:
            return show(username, 400, error="Give the CalDAV server URL (https://...), the user name and "
                                             "an app password.")
        try:
            connector(panel.database, panel.config, panel.ring, username, url, account, password)
        except (ConnectError, AdminError) as exc:
            return show(username, 400, error=str(exc))
        panel.audit("connection.create", username, f"caldav {url} as {account}")
        flash("CalDAV account connected; its calendars are being imported.", "notice")
        return redirect(url_for("admin.tech_connections", username=username), 303)

    @bp.post("/techs/<username>/calendars")
    @login_required
    def tech_calendars(username: str):  # type: ignore[no-untyped-def]
        tech_or_404(username)
        mode = request.form.get("selection", "")
        if mode not in SELECTIONS:
            return show(username, 400, error="Choose which calendars to sync.")
        chosen = request.form.getlist("calendar")
        bookings_to = request.form.get("bookings_to") or None
        try:
            rows = sync_admin.choose_calendars(
                panel.database, username, primary_only=mode == "primary", busy=mode == "busy",
                select_ids=chosen if mode == "chosen" else None, bookings_to=bookings_to)
        except AdminError as exc:
            return show(username, 400, error=str(exc))
        if mode == "chosen" and not chosen:
            # choose_calendars treats "no ids" as "leave the selection"; an empty choice means primary only
            rows = sync_admin.choose_calendars(panel.database, username, primary_only=True)
        synced = [name for _, name, selected in rows if selected]
        panel.audit("calendars.choose", username,
                    f"{mode}: {', '.join(synced) or 'none'}; bookings to {bookings_to or 'primary'}")
        flash(f"Saved: syncing {len(synced)} calendar(s). New calendars appear after the import "
              "that was just queued.", "notice")
        return redirect(url_for("admin.tech_connections", username=username), 303)

    @bp.post("/techs/<username>/sync")
    @login_required
    def tech_sync(username: str):  # type: ignore[no-untyped-def]
        try:
            queued = sync_admin.sync_now(panel.database, username)
        except AdminError as exc:
            return show(username, 400, error=str(exc))
        panel.audit("sync.now", username, f"{queued} calendar sync(s) queued")
        flash(f"Queued {queued} calendar sync(s).", "notice")
        return redirect(url_for("admin.tech_connections", username=username), 303)

    @bp.post("/techs/<username>/disconnect/<provider>")
    @login_required
    def tech_disconnect(username: str, provider: str):  # type: ignore[no-untyped-def]
        tech_or_404(username)
        try:
            removed = panel.bridge.disconnect(username, provider)
        except LookupError as exc:
            return show(username, 400, error=str(exc))
        panel.audit("connection.remove", username, f"{provider}; {removed} mirror calendar(s) removed")
        flash(f"{PROVIDER_LABELS.get(provider, provider)} disconnected; {removed} mirrored calendar(s) removed.",
              "notice")
        return redirect(url_for("admin.tech_connections", username=username), 303)
