"""API tokens for booking software: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, request, url_for
from sqlalchemy import select

from admin.panel import Panel, page
from admin.web_session import login_required
from server import techs as tech_service
from server.models import ApiToken
from server.principals import TOKEN_SCOPES
from server.techs import AdminError


def register(bp: Blueprint, panel: Panel) -> None:
    def show(status: int = 200, **extra: object):  # type: ignore[no-untyped-def]
        with panel.database.read() as session:
            rows = list(session.scalars(select(ApiToken).order_by(ApiToken.name)))
        return page("tokens.html", status, tokens=rows, scopes=TOKEN_SCOPES, **extra)

    @bp.get("/tokens")
    @login_required
    def tokens():  # type: ignore[no-untyped-def]
        return show()

    @bp.post("/tokens")
    @login_required
    def token_create():  # type: ignore[no-untyped-def]
        name = request.form.get("name", "").strip()
        scope = request.form.get("scope", "")
        try:
            credential = tech_service.create_token(panel.database, name, scope)
        except AdminError as exc:
            return show(400, error=str(exc), name=name)
        panel.audit("token.create", credential.name, f"scope {scope}")
        return show(created=credential, bearer=f"{credential.name}.{credential.secret}")

    @bp.post("/tokens/<name>/revoke")
    @login_required
    def token_revoke(name: str):  # type: ignore[no-untyped-def]
        try:
            tech_service.revoke_token(panel.database, name)
        except AdminError as exc:
            return show(404, error=str(exc))
        panel.audit("token.revoke", name)
        flash(f"Token {name} revoked; it stops working at once.", "notice")
        return redirect(url_for("admin.tokens"), 303)
