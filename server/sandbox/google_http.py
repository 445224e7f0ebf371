"""HTTP surface of the Google emulator: one Flask app with Google's paths.

Paths are those the real client libraries call once pointed at the emulator:
``/o/oauth2/auth``, ``/token``, ``/revoke``, ``/oauth2/v3/userinfo`` and
``/calendar/v3/...``. Faults and latency are applied before routing, and every
request is logged for tests.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, redirect, request
from werkzeug.exceptions import HTTPException

from server.sandbox import google_errors as errors
from server.sandbox import google_web
from server.sandbox.google_events import Params, etag_matches
from server.sandbox.google_oauth import CALENDAR_SCOPE, OAuthError

if TYPE_CHECKING:
    from server.sandbox.google import GoogleSandbox

_CAL = CALENDAR_SCOPE
READ = frozenset({_CAL, f"{_CAL}.readonly", f"{_CAL}.events", f"{_CAL}.events.readonly",
                  f"{_CAL}.events.owned", f"{_CAL}.events.owned.readonly"})
WRITE = frozenset({_CAL, f"{_CAL}.events", f"{_CAL}.events.owned"})
CAL_LIST = frozenset({_CAL, f"{_CAL}.readonly", f"{_CAL}.calendarlist",
                      f"{_CAL}.calendarlist.readonly"})
FREEBUSY = frozenset({_CAL, f"{_CAL}.readonly", f"{_CAL}.freebusy", f"{_CAL}.events.freebusy"})
V3 = "/calendar/v3"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {},
                    content_type="application/json; charset=UTF-8")


def create_app(sb: GoogleSandbox) -> Flask:
    app = Flask("google_sandbox")
    app.url_map.strict_slashes = False

    # --- cross-cutting ----------------------------------------------------------------
    @app.before_request
    def _log_and_faults() -> None:
        g.log = {"method": request.method, "path": request.path,
                 "query": request.args.to_dict(flat=False), "status": None,
                 "time": time.time()}
        sb.requests.append(g.log)
        if request.path.startswith("/_sandbox"):
            return
        form = request.form if request.mimetype == "application/x-www-form-urlencoded" else {}
        delay, fault, g.reply_delay = sb.faults.take(request.method, request.path, request.args, form)
        if delay:
            time.sleep(delay)
        if fault is not None:
            raise fault.error(request.path)

    @app.after_request
    def _log_status(response: Response) -> Response:
        if "log" in g:
            g.log["status"] = response.status_code
        if g.get("reply_delay"):
            time.sleep(g.reply_delay)
        return response

    @app.errorhandler(errors.ApiError)
    def _api_error(exc: errors.ApiError) -> Response:
        return _json(exc.body(), exc.code, exc.headers)

    @app.errorhandler(OAuthError)
    def _oauth_error(exc: OAuthError) -> Response:
        headers = {"Cache-Control": "no-store", **getattr(exc, "headers", {})}
        return _json(exc.body(), exc.status, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 405:
            err = errors.ApiError(405, "Method Not Allowed", reason="httpMethodNotAllowed")
        elif exc.code == 404:
            err = errors.not_found()
        else:
            err = errors.ApiError(exc.code or 400, exc.description or "Bad Request",
                                  reason="badRequest")
        return _json(err.body(), err.code)

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        sb.server_errors.append("".join(traceback.format_exception(exc)))
        err = errors.injected(500)
        return _json(err.body(), 500)

    def user_for(scopes: frozenset[str]) -> str:
        access = sb.oauth.authenticate(request.headers.get("Authorization"),
                                       request.args.get("access_token"))
        if not set(access.scopes) & scopes:
            raise errors.insufficient_scope()
        return access.user

    def body() -> Any:
        raw = request.get_data()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise errors.ApiError(400, "Parse Error", reason="parseError") from None

    # --- OAuth ----------------------------------------------------------------------------
    def error_page(exc: OAuthError) -> Response:
        text = (f"<!doctype html><title>Error</title><h1>Error {exc.status}: "
                f"{html.escape(exc.error)}</h1><p>{html.escape(exc.description)}</p>")
        return Response(text, status=exc.status, mimetype="text/html")

    @app.get("/o/oauth2/auth")
    @app.get("/o/oauth2/v2/auth")
    def consent() -> Any:
        args = request.args.to_dict()
        try:
            req = sb.oauth.start_consent(args)
        except OAuthError as exc:
            return error_page(exc)
        mode = args.get("sandbox_consent") or sb.config.consent_mode
        if mode == "deny":
            return redirect(sb.oauth.decide(req, None, False), 302)
        users = sb.store.users
        chosen = next((u for u in (req.login_hint, sb.config.consent_user) if u in users), None)
        if chosen is None and len(users) == 1:
            chosen = next(iter(users))
        if mode == "approve" and chosen is not None:
            return redirect(sb.oauth.decide(req, chosen, True), 302)
        return Response(sb.oauth.consent_page(req, "/o/oauth2/auth/decision"),
                        mimetype="text/html")

    @app.post("/o/oauth2/auth/decision")
    def consent_decision() -> Any:
        req = sb.oauth.pending.get(request.form.get("request_id", ""))
        if req is None:
            return error_page(OAuthError(400, "invalid_request", "Unknown or used request."))
        approve = request.form.get("decision") == "approve"
        return redirect(sb.oauth.decide(req, request.form.get("email"), approve), 302)

    @app.post("/token")
    @app.post("/o/oauth2/token")
    def token() -> Response:
        fields = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        answer = sb.oauth.token({str(k): str(v) for k, v in (fields or {}).items()},
                                request.headers.get("Authorization"))
        return _json(answer, 200, {"Cache-Control": "no-cache, no-store, max-age=0, "
                                   "must-revalidate", "Pragma": "no-cache"})

    @app.route("/revoke", methods=["GET", "POST"])
    @app.route("/o/oauth2/revoke", methods=["GET", "POST"])
    def revoke() -> Response:
        token_value = request.values.get("token")
        if not token_value:
            raise OAuthError(400, "invalid_request", "Missing required parameter: token")
        sb.oauth.revoke(token_value)
        return _json({})

    @app.get("/oauth2/v3/userinfo")
    @app.get("/oauth2/v2/userinfo")
    def userinfo() -> Response:
        access = sb.oauth.authenticate(request.headers.get("Authorization"),
                                       request.args.get("access_token"))
        account = sb.store.users[access.user]
        return _json({"sub": _sub(access.user), "email": access.user, "email_verified": True,
                      "name": account.name})

    # --- Calendar v3 --------------------------------------------------------------------
    @app.get(f"{V3}/users/me/calendarList")
    def calendar_list() -> Response:
        return _json(sb.listings.calendar_list(user_for(CAL_LIST), Params(request.args)))

    @app.get(f"{V3}/users/me/calendarList/<cal>")
    def calendar_list_entry(cal: str) -> Response:
        return _json(sb.listings.calendar_entry(user_for(CAL_LIST), cal))

    @app.get(f"{V3}/calendars/<cal>")
    def calendar_get(cal: str) -> Response:
        return _json(sb.listings.calendar_get(user_for(CAL_LIST | READ), cal))

    @app.get(f"{V3}/calendars/<cal>/events")
    def events_list(cal: str) -> Response:
        return _json(sb.listings.list_events(user_for(READ), cal, Params(request.args)))

    @app.post(f"{V3}/calendars/<cal>/events")
    def events_insert(cal: str) -> Response:
        return _json(sb.events.insert(user_for(WRITE), cal, body()))

    @app.post(f"{V3}/calendars/<cal>/events/watch")
    def events_watch(cal: str) -> Response:
        user = user_for(READ)
        calendar, _ = sb.events.calendar(user, cal)
        return _json(sb.push.watch(user, calendar.id, body(), sb.base_url))

    @app.get(f"{V3}/calendars/<cal>/events/<eid>")
    def events_get(cal: str, eid: str) -> Response:
        event = sb.events.get(user_for(READ), cal, eid, Params(request.args))
        none_match = request.headers.get("If-None-Match")
        if none_match and etag_matches(none_match, event["etag"]):
            return Response(status=304, headers={"ETag": event["etag"]})
        return _json(event, 200, {"ETag": event["etag"]})

    @app.route(f"{V3}/calendars/<cal>/events/<eid>", methods=["PUT", "PATCH"])
    def events_modify(cal: str, eid: str) -> Response:
        event = sb.events.modify(user_for(WRITE), cal, eid, body(),
                                 if_match=request.headers.get("If-Match"),
                                 patch=request.method == "PATCH")
        return _json(event, 200, {"ETag": event["etag"]})

    @app.delete(f"{V3}/calendars/<cal>/events/<eid>")
    def events_delete(cal: str, eid: str) -> Response:
        sb.events.delete(user_for(WRITE), cal, eid, if_match=request.headers.get("If-Match"))
        return Response(status=204)

    @app.get(f"{V3}/calendars/<cal>/events/<eid>/instances")
    def events_instances(cal: str, eid: str) -> Response:
        return _json(sb.listings.instances(user_for(READ), cal, eid, Params(request.args)))

    @app.post(f"{V3}/channels/stop")
    def channels_stop() -> Response:
        sb.push.stop(user_for(READ | CAL_LIST), body())
        return Response(status=204)

    @app.post(f"{V3}/freeBusy")
    def freebusy() -> Response:
        return _json(sb.listings.freebusy(user_for(FREEBUSY), body()))

    @app.get("/_sandbox/health")
    def health() -> Response:
        return _json({"ok": True, "base_url": sb.base_url})

    google_web.register(app, sb)
    return app


def _sub(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:21]
