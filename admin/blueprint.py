"""The /admin/ blueprint: sessions, CSRF on every form (this blueprint only), login and logout."""

from __future__ import annotations

from flask import Blueprint, Flask, g, redirect, request, session, url_for
from flask.blueprints import BlueprintSetupState
from flask_wtf.csrf import CSRFError, CSRFProtect

from admin import accounts, web_session
from admin.panel import Panel, page
from admin.views import register_views
from server.config import Config
from server.connections import key_ring
from server.db import Database


def create_admin_blueprint(database: Database, config: Config, secret_key: str) -> Blueprint:
    panel = Panel(database, config, key_ring(config, secret_key))
    admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
                      static_folder="static", static_url_path="/static")
    csrf = CSRFProtect()

    @admin.record_once
    def _setup(state: BlueprintSetupState) -> None:
        app: Flask = state.app
        # CSRF is checked by this blueprint's before_request only: /api, /hooks, /oauth and
        # /dav take no cookies and must not require a form token.
        app.config["WTF_CSRF_CHECK_DEFAULT"] = False
        app.config["WTF_CSRF_SECRET_KEY"] = web_session.derive_key(secret_key, "csrf")
        app.config["WTF_CSRF_TIME_LIMIT"] = web_session.MAX_AGE_SECONDS
        csrf.init_app(app)
        session_key = web_session.derive_key(secret_key, "session")
        app.session_interface = web_session.AdminSessionInterface(session_key)

    @admin.before_request
    def _guard():  # type: ignore[no-untyped-def]
        if any("\x00" in value for values in request.form.listvalues() for value in values):
            return page("error.html", 400, title="Not saved",
                        message="A field contains a NUL character; nothing was changed.")
        csrf.protect()
        g.admin = web_session.current_admin()
        if g.admin is not None and accounts.find_admin(database, g.admin) is None:
            session.clear()  # the account is gone: so is the session
            g.admin = None
        return None

    @admin.after_request
    def _headers(response):  # type: ignore[no-untyped-def]
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        return response

    @admin.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):  # type: ignore[no-untyped-def]
        return page("error.html", 400, title="Form expired or forged",
                    message=f"This form was refused ({exc.description}). Reload the page and try again.")

    @admin.errorhandler(404)
    def _not_found(_exc: Exception):  # type: ignore[no-untyped-def]
        return page("error.html", 404, title="Not found",
                    message="There is no such tech, token or page (it may have been removed meanwhile).")

    @admin.errorhandler(500)
    def _server_error(_exc: Exception):  # type: ignore[no-untyped-def]
        return page("error.html", 500, title="Something went wrong",
                    message="The server failed while doing this; the error is in the server log. "
                            "Changes made by this action may be incomplete: reload and check.")

    @admin.route("/login", methods=["GET", "POST"])
    def login():  # type: ignore[no-untyped-def]
        target = request.values.get("next", "")
        if not target.startswith("/admin/") or target.startswith("//"):
            target = url_for("admin.dashboard")
        if request.method == "GET":
            return page("login.html", next=target)
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        try:
            account = accounts.log_in(database, username, password, _client_ip(config))
        except accounts.TooManyAttempts as exc:
            body, _, headers = page("login.html", 429, next=target, username=username,
                                    error=f"Too many failed logins for {username!r} from your address. "
                                          f"Try again in {exc.retry_after // 60 + 1} minute(s).")
            return body, 429, {**headers, "Retry-After": str(exc.retry_after)}
        if account is None:
            return page("login.html", 401, next=target, username=username,
                        error="Wrong user name or password.")
        web_session.start(account.username)
        return redirect(target, 303)

    @admin.post("/logout")
    def logout():  # type: ignore[no-untyped-def]
        if g.admin:
            panel.audit("logout", g.admin)
        session.clear()
        return redirect(url_for("admin.login"), 303)

    register_views(admin, panel)
    return admin


def _client_ip(config: Config) -> str:
    """The browser's address: with a trusted proxy, the address that proxy saw (the last
    X-Forwarded-For entry; earlier entries are whatever the client chose to send)."""
    if config.get("server", "trust_forwarded"):
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return forwarded
    return request.remote_addr or "-"
