"""Techs: list, create, edit (zone, hours, policy), remove, and the iPhone set-up page."""

from __future__ import annotations

from typing import Mapping

from flask import Blueprint, Response, abort, flash, redirect, request, url_for
from sqlalchemy import select

from admin import forms, mobileconfig
from admin.panel import PageResponse, Panel, page
from admin.web_session import login_required
from server import techs as tech_service
from server.models import Connection, Tech, TechSettings
from server.techs import AdminError


def register(bp: Blueprint, panel: Panel) -> None:
    def load(username: str) -> tuple[Tech, TechSettings | None]:
        with panel.database.read() as session:
            tech = session.scalar(select(Tech).where(Tech.username == username))
            if tech is None:
                abort(404)
            return tech, session.get(TechSettings, tech.id)

    def form_page(template: str, values: dict[str, str], status: int = 200, **extra: object) -> PageResponse:
        return page(template, status, values=values, zones=forms.time_zones(), days=forms.DAY_NAMES,
                    allday_labels=forms.ALLDAY_LABELS, **extra)

    @bp.get("/techs")
    @login_required
    def techs():  # type: ignore[no-untyped-def]
        with panel.database.read() as session:
            rows = list(session.scalars(select(Tech).order_by(Tech.username)))
            providers: dict[int, list[str]] = {}
            for tech_id, provider in session.execute(select(Connection.tech_id, Connection.provider)):
                providers.setdefault(tech_id, []).append(provider)
        return page("techs.html", techs=rows, providers=providers)

    @bp.route("/techs/new", methods=["GET", "POST"])
    @login_required
    def tech_new():  # type: ignore[no-untyped-def]
        if request.method == "GET":
            return form_page("tech_form.html", forms.form_values(None, None), creating=True)
        try:
            form = forms.read_tech_form(request.form)
            credential = tech_service.add_tech(
                panel.database, form.values["username"], name=form.values["name"], email=form.values["email"],
                tz=form.values["timezone"], hours=form.hours, settings=form.settings)
        except AdminError as exc:
            values = {**forms.form_values(None, None), **_posted(request.form)}
            return form_page("tech_form.html", values, 400, creating=True, error=str(exc))
        panel.audit("tech.create", credential.name, f"zone {form.values['timezone']}, hours {form.hours!r}")
        tech, _ = load(credential.name)
        return _iphone_page(panel, tech, new_password=credential.secret, created=True)

    @bp.route("/techs/<username>", methods=["GET", "POST"])
    @login_required
    def tech_edit(username: str):  # type: ignore[no-untyped-def]
        tech, settings = load(username)
        if request.method == "GET":
            return form_page("tech_form.html", forms.form_values(tech, settings), tech=tech)
        try:
            form = forms.read_tech_form(request.form)
            reindexed = tech_service.update_tech(
                panel.database, username, name=form.values["name"], email=form.values["email"],
                tz=form.values["timezone"], hours=form.hours, settings=form.settings)
        except AdminError as exc:
            values = {**forms.form_values(tech, settings), **_posted(request.form)}
            return form_page("tech_form.html", values, 400, tech=tech, error=str(exc))
        changes = _describe_changes(forms.form_values(tech, settings), form.values)
        panel.audit("tech.update", username, changes or "no change")
        flash(f"Saved. Busy time of {reindexed} calendar item(s) recomputed.", "notice")
        return redirect(url_for("admin.tech_edit", username=username), 303)

    @bp.post("/techs/<username>/remove")
    @login_required
    def tech_remove(username: str):  # type: ignore[no-untyped-def]
        tech, _ = load(username)
        if request.form.get("confirm") != username:
            return page("error.html", 400, title="Not removed",
                        message=f"Type the user name {username!r} to confirm removing this tech.")
        with panel.database.read() as session:
            providers = list(session.scalars(
                select(Connection.provider).where(Connection.tech_id == tech.id)))
        for provider in providers:  # stop push channels first; removing the tech alone would orphan them
            panel.bridge.disconnect(username, provider)
        tech_service.remove_tech(panel.database, username)
        panel.audit("tech.remove", username, f"disconnected: {', '.join(providers) or 'nothing'}")
        flash(f"Removed {username} and their calendars.", "notice")
        return redirect(url_for("admin.techs"), 303)

    @bp.get("/techs/<username>/iphone")
    @login_required
    def tech_iphone(username: str):  # type: ignore[no-untyped-def]
        tech, _ = load(username)
        return _iphone_page(panel, tech)

    @bp.post("/techs/<username>/password")
    @login_required
    def tech_password(username: str):  # type: ignore[no-untyped-def]
        tech, _ = load(username)
        credential = tech_service.set_password(panel.database, username)
        panel.audit("tech.password_reset", username)
        return _iphone_page(panel, tech, new_password=credential.secret)

    @bp.get("/techs/<username>/lockstep.mobileconfig")
    @login_required
    def tech_mobileconfig(username: str):  # type: ignore[no-untyped-def]
        tech, _ = load(username)
        body = mobileconfig.caldav_profile(panel.config.public_url, tech.username, display_name=tech.name)
        panel.audit("tech.profile_download", username)
        return Response(body, mimetype=mobileconfig.PROFILE_MIME, headers={
            "Content-Disposition": f'attachment; filename="lockstep-{tech.username}.mobileconfig"',
            "Cache-Control": "no-store"})


def _iphone_page(panel: Panel, tech: Tech, *, new_password: str | None = None,
                 created: bool = False) -> PageResponse:
    profile_with_password = None
    if new_password:
        import base64

        body = mobileconfig.caldav_profile(panel.config.public_url, tech.username, display_name=tech.name,
                                           password=new_password)
        profile_with_password = f"data:{mobileconfig.PROFILE_MIME};base64,{base64.b64encode(body).decode()}"
    return page("iphone.html", tech=tech, dav_url=panel.dav_url, public_url=panel.config.public_url,
                new_password=new_password, created=created, profile_with_password=profile_with_password)


def _posted(form: Mapping[str, str]) -> dict[str, str]:
    values = {k: str(v).strip() for k, v in form.items() if k != "csrf_token"}
    values["tentative_blocks"] = "on" if values.get("tentative_blocks") else ""
    return values


def _describe_changes(before: dict[str, str], after: dict[str, str]) -> str:
    return "; ".join(f"{key}: {before.get(key, '')!r} → {value!r}" for key, value in sorted(after.items())
                     if key != "username" and before.get(key, "") != value)
