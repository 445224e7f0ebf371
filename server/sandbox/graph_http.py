"""HTTP surface of the Graph emulator: one Flask app with the identity
platform's paths (``/{tenant}/...``) and Graph's (``/v1.0/...``).

Faults (429, 5xx) apply to Graph calls before routing; every request is logged
(without credentials) for tests to inspect.
"""

from __future__ import annotations

import html
import json
import re
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode

from flask import Flask, Response, g, redirect, request
from werkzeug.exceptions import HTTPException

from server.sandbox import graph_errors as errors
from server.sandbox.graph_oauth import OAuthError, with_query
from server.sandbox.graph_time import parse_query_instant, zone
from server.sandbox.graph_view import matches_filter, parse_expand, parse_filter

if TYPE_CHECKING:
    from server.sandbox.graph import GraphSandbox

V1 = "/v1.0"
_PREFER = re.compile(r'(odata\.maxpagesize|outlook\.timezone)\s*=\s*("([^"]*)"|[^,;\s]+)', re.I)
CAL_PREFIXES = (f"{V1}/me/calendar", f"{V1}/me/calendars/<cal>")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {},
                    content_type="application/json; charset=utf-8")


def _routes(app: Flask, rule: str, prefixes: tuple[str, ...], methods: list[str],
            endpoint: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register one view under several path prefixes (``/me``, ``/me/calendars/{id}``...)."""
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        for i, prefix in enumerate(prefixes):
            app.add_url_rule(prefix + rule, f"{endpoint}_{i}", view, methods=methods)
        return view
    return wrap


class _UsersAlias:
    """``/v1.0/users/{id or userPrincipalName}/...`` served as ``/v1.0/me/...`` for the
    signed-in user (delegated access to another mailbox is refused in ``me()``)."""

    PATTERN = re.compile(r"^/v1\.0/users/([^/]+)(/.*)?$")

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        match = self.PATTERN.match(environ.get("PATH_INFO", ""))
        if match:
            environ["graph_sandbox.user_alias"] = unquote(match.group(1))
            environ["PATH_INFO"] = f"{V1}/me{match.group(2) or ''}"
        return self.wsgi_app(environ, start_response)


def create_app(sb: GraphSandbox) -> Flask:
    app = Flask("graph_sandbox")
    app.url_map.strict_slashes = False
    app.wsgi_app = _UsersAlias(app.wsgi_app)  # type: ignore[method-assign]

    # --- cross-cutting ---------------------------------------------------------------------
    @app.before_request
    def _log_and_faults() -> None:
        g.log = {"method": request.method, "path": request.path,
                 "query": request.args.to_dict(flat=False), "status": None,
                 "prefer": request.headers.get("Prefer"),
                 "if_match": request.headers.get("If-Match"), "time": time.time()}
        sb.requests.append(g.log)
        if request.path.startswith(V1):
            delay = sb.take_delay(request.path)
            if delay:
                time.sleep(delay)
            fault = sb.take_fault()
            if fault is not None:
                raise fault

    @app.after_request
    def _log_status(response: Response) -> Response:
        if "log" in g:
            g.log["status"] = response.status_code
        return response

    @app.errorhandler(errors.GraphError)
    def _graph_error(exc: errors.GraphError) -> Response:
        return _json(exc.body(), exc.status, exc.headers)

    @app.errorhandler(OAuthError)
    def _oauth_error(exc: OAuthError) -> Response:
        return _json(exc.body(), exc.status, {"Cache-Control": "no-store"})

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.code == 404:
            segment = request.path.rstrip("/").rsplit("/", 1)[-1]
            err = errors.GraphError(400, "BadRequest",
                                    f"Resource not found for the segment '{segment}'.")
        elif exc.code == 405:
            err = errors.GraphError(405, "Request_BadRequest",
                                    f"The method {request.method} is not allowed here.")
        else:
            err = errors.GraphError(exc.code or 400, "BadRequest",
                                    exc.description or "Bad request")
        return _json(err.body(), err.status)

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        sb.server_errors.append("".join(traceback.format_exception(exc)))
        err = errors.server_error(500)
        return _json(err.body(), 500)

    def me(write: bool = False) -> tuple[str, str]:
        """The signed-in user's email and the client id, from the bearer token."""
        access = sb.identity.authenticate(request.headers.get("Authorization"))
        sb.identity.require(access, write)
        alias = request.environ.get("graph_sandbox.user_alias")
        if alias is not None:
            user = sb.store.user(access.user)
            if alias.lower() not in (user.id, user.email.lower()):
                raise errors.access_denied()
        return access.user, access.client_id

    def body() -> Any:
        raw = request.get_data()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise errors.bad_request("Unable to read JSON request payload. Please ensure "
                                     "Content-Type header is set and payload is of valid JSON "
                                     "format.", code="BadRequest") from None

    def prefer() -> dict[str, str]:
        found: dict[str, str] = {}
        for header in request.headers.getlist("Prefer"):
            for match in _PREFER.finditer(header):
                found[match.group(1).lower()] = match.group(3) if match.group(3) is not None \
                    else match.group(2)
        return found

    def out_zone() -> str:
        name = prefer().get("outlook.timezone") or "UTC"
        zone(name)
        return name

    def page_size() -> int:
        config = sb.store.config
        raw = request.args.get("$top") or prefer().get("odata.maxpagesize")
        if raw is None:
            return config.default_page_size
        try:
            size = int(raw)
        except ValueError:
            raise errors.bad_request(f"Invalid page size '{raw}'.", code="BadRequest") from None
        if size < 1:
            raise errors.bad_request("The page size must be positive.", code="BadRequest")
        return min(size, config.max_page_size)

    def paged(items: list[dict[str, Any]], extra: dict[str, str] | None = None) -> Response:
        try:
            skip = int(request.args.get("$skip", "0"))
        except ValueError:
            raise errors.bad_request("Invalid $skip.", code="BadRequest") from None
        size = page_size()
        answer: dict[str, Any] = {
            "@odata.context": f"{sb.graph_url}/$metadata#Collection", "value": items[
                skip:skip + size]}
        if skip + size < len(items):
            args = request.args.to_dict()
            args["$skip"] = str(skip + size)
            answer["@odata.nextLink"] = f"{sb.base_url}{request.path}?{urlencode(args)}"
        headers = dict(extra or {})
        zone_name = prefer().get("outlook.timezone")
        if zone_name:
            headers["Preference-Applied"] = f'outlook.timezone="{zone_name}"'
        return _json(answer, 200, headers)

    def calendar_id(user: str, cal: str | None) -> str:
        account = sb.store.user(user)
        if cal is None:
            return account.default_calendar
        if sb.store.calendar_of(user, cal) is None:
            raise errors.not_found("The specified object was not found in the store.")
        return cal

    def select(resource: dict[str, Any]) -> dict[str, Any]:
        raw = request.args.get("$select")
        if not raw:
            return resource
        keep = {s.strip() for s in raw.split(",")} | {"id", "@odata.etag",
                                                       "singleValueExtendedProperties"}
        return {k: v for k, v in resource.items() if k in keep}

    # --- identity platform --------------------------------------------------------------------
    @app.get("/<tenant>/v2.0/.well-known/openid-configuration")
    def openid_configuration(tenant: str) -> Response:
        return _json(sb.identity.openid_configuration(sb.base_url, tenant))

    @app.get("/<tenant>/discovery/v2.0/keys")
    def jwks(tenant: str) -> Response:
        return _json({"keys": []})

    def error_page(exc: OAuthError) -> Response:
        text = (f"<!doctype html><title>Sign in error</title><h1>Sorry, but we're having "
                f"trouble signing you in.</h1><p>AADSTS{exc.aadsts}: "
                f"{html.escape(exc.description)}</p><p>{html.escape(exc.error)}</p>")
        return Response(text, status=exc.status, mimetype="text/html")

    def answer_client(req: Any, params: dict[str, str]) -> Response:
        if req.response_mode == "form_post":
            return Response(sb.identity.form_post_page(req.redirect_uri, params),
                            mimetype="text/html")
        if req.response_mode == "fragment":
            return redirect(f"{req.redirect_uri}#{urlencode(params)}", 302)
        return redirect(with_query(req.redirect_uri, params), 302)

    @app.get("/<tenant>/oauth2/v2.0/authorize")
    def authorize(tenant: str) -> Response:
        args = request.args.to_dict()
        try:
            sb.identity.check_tenant(tenant)
            req = sb.identity.start(args)
        except OAuthError as exc:
            return error_page(exc)
        mode = args.get("sandbox_consent") or sb.store.config.consent_mode
        if mode == "deny":
            return answer_client(req, sb.identity.decide(req, None, False))
        chosen = req.login_hint
        if chosen is None and len(sb.store.users) == 1:
            chosen = next(iter(sb.store.users.values())).email
        if mode == "approve" and chosen is not None:
            return answer_client(req, sb.identity.decide(req, chosen, True))
        return Response(sb.identity.consent_page(
            req, f"/{tenant}/oauth2/v2.0/authorize/decision"), mimetype="text/html")

    @app.post("/<tenant>/oauth2/v2.0/authorize/decision")
    def authorize_decision(tenant: str) -> Response:
        req = sb.identity.pending.get(request.form.get("request_id", ""))
        if req is None:
            return error_page(OAuthError(400, "invalid_request", 900144,
                                         "Unknown or already answered request."))
        approve = request.form.get("decision") == "approve"
        return answer_client(req, sb.identity.decide(req, request.form.get("email"), approve))

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token(tenant: str) -> Response:
        answer = sb.identity.token(tenant, request.form.to_dict(),
                                   request.headers.get("Authorization"), sb.base_url)
        return _json(answer, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    # --- user and calendars ------------------------------------------------------------------
    @app.get(f"{V1}/me")
    def get_me() -> Response:
        user = sb.store.user(me()[0])
        return _json({"@odata.context": f"{sb.graph_url}/$metadata#users/$entity",
                      "id": user.id, "displayName": user.name, "mail": user.email,
                      "userPrincipalName": user.email, "givenName": None, "surname": None,
                      "businessPhones": [], "jobTitle": None, "mobilePhone": None,
                      "officeLocation": None, "preferredLanguage": "en-US"})

    @app.get(f"{V1}/me/mailboxSettings")
    def mailbox_settings() -> Response:
        user = sb.store.user(me()[0])
        return _json({"timeZone": user.time_zone, "dateFormat": "yyyy-MM-dd",
                      "timeFormat": "HH:mm", "language": {"locale": "en-US"}})

    def calendar_json(cal_id: str) -> dict[str, Any]:
        cal = sb.store.calendars[cal_id]
        owner = sb.store.user(cal.owner)
        return {"id": cal.id, "name": cal.name, "color": cal.color, "hexColor": "",
                "isDefaultCalendar": cal.is_default, "changeKey": cal.change_key,
                "canShare": cal.can_edit, "canViewPrivateItems": True, "canEdit": cal.can_edit,
                "isRemovable": not cal.is_default, "isTallyingResponses": True,
                "allowedOnlineMeetingProviders": ["teamsForBusiness"],
                "defaultOnlineMeetingProvider": "teamsForBusiness",
                "owner": {"name": owner.name, "address": owner.email}}

    @app.get(f"{V1}/me/calendars")
    def list_calendars() -> Response:
        user = me()[0]
        with sb.store.lock:
            return paged([calendar_json(c) for c in sb.store.user(user).calendars])

    @app.get(f"{V1}/me/calendar")
    @app.get(f"{V1}/me/calendars/<cal>")
    def get_calendar(cal: str | None = None) -> Response:
        user = me()[0]
        with sb.store.lock:
            return _json(calendar_json(calendar_id(user, cal)))

    # --- events -------------------------------------------------------------------------------
    ev_prefixes = (f"{V1}/me",) + CAL_PREFIXES

    @_routes(app, "/events", ev_prefixes, ["GET"], "list_events")
    def list_events(cal: str | None = None) -> Response:
        user = me()[0]
        expand = parse_expand(request.args.get("$expand"))
        flt = parse_filter(request.args.get("$filter"))
        tz = out_zone()
        with sb.store.lock:
            if cal is None and request.path.startswith(f"{V1}/me/events"):
                cal_ids = list(sb.store.user(user).calendars)
            else:
                cal_ids = [calendar_id(user, cal)]
            records = [r for c in cal_ids for r in sb.store.calendars[c].events.values()
                       if not r.deleted and matches_filter(r, flt)]
            records.sort(key=lambda r: (r.created, r.id))
            items = [select(sb.view.render_record(r, tz, expand)) for r in records]
        return paged(items)

    @_routes(app, "/events", ev_prefixes, ["POST"], "create_event")
    def create_event(cal: str | None = None) -> Response:
        user = me(write=True)[0]
        with sb.store.lock:
            target = calendar_id(user, cal)
            resource, _ = sb.events.create(user, target, body())
            tz = out_zone()
            if tz != "UTC":
                resource = sb.view.render_record(sb.view.locate(user, resource["id"])[0], tz)
        return _json(resource, 201)

    def _in_calendar(user: str, cal: str | None, event_id: str) -> None:
        if cal is None and not request.path.startswith(f"{V1}/me/calendar/"):
            return
        rec, _ = sb.view.locate(user, event_id)
        if rec.calendar_id != calendar_id(user, cal):
            raise errors.not_found()

    def render_by_id(user: str, event_id: str, tz: str, expand: list[str] | None) -> Any:
        rec, key = sb.view.locate(user, event_id)
        if key is None:
            return sb.view.render_record(rec, tz, expand)
        return sb.view.render_instance(sb.view.instance(rec, key), tz, expand)

    @_routes(app, "/events/<eid>", ev_prefixes, ["GET"], "get_event")
    def get_event(eid: str, cal: str | None = None) -> Response:
        user = me()[0]
        expand = parse_expand(request.args.get("$expand"))
        with sb.store.lock:
            _in_calendar(user, cal, eid)
            return _json(select(render_by_id(user, eid, out_zone(), expand)))

    @_routes(app, "/events/<eid>", ev_prefixes, ["PATCH"], "update_event")
    def update_event(eid: str, cal: str | None = None) -> Response:
        user = me(write=True)[0]
        with sb.store.lock:
            _in_calendar(user, cal, eid)
            sb.events.update(user, eid, body(), if_match=request.headers.get("If-Match"))
            return _json(render_by_id(user, eid, out_zone(), None))

    @_routes(app, "/events/<eid>", ev_prefixes, ["DELETE"], "delete_event")
    def delete_event(eid: str, cal: str | None = None) -> Response:
        user = me(write=True)[0]
        with sb.store.lock:
            _in_calendar(user, cal, eid)
        sb.events.delete(user, eid, if_match=request.headers.get("If-Match"))
        return Response(status=204)

    @_routes(app, "/events/<eid>/<action>", ev_prefixes, ["POST"], "respond_event")
    def respond_event(eid: str, action: str, cal: str | None = None) -> Response:
        responses = {"accept": "accepted", "decline": "declined",
                     "tentativelyaccept": "tentativelyAccepted"}
        if action.lower() not in responses:
            raise errors.GraphError(400, "BadRequest",
                                    f"Resource not found for the segment '{action}'.")
        user = me(write=True)[0]
        with sb.store.lock:
            _in_calendar(user, cal, eid)
        sb.events.respond(user, eid, responses[action.lower()])
        return Response(status=202)

    @_routes(app, "/events/<eid>/instances", ev_prefixes, ["GET"], "event_instances")
    def event_instances(eid: str, cal: str | None = None) -> Response:
        user = me()[0]
        start = parse_query_instant(request.args.get("startDateTime"), "startDateTime")
        end = parse_query_instant(request.args.get("endDateTime"), "endDateTime")
        tz = out_zone()
        with sb.store.lock:
            _in_calendar(user, cal, eid)
            rec, key = sb.view.locate(user, eid)
            if key is not None or not rec.is_master:
                raise errors.bad_request("The instances navigation is only valid for a series "
                                         "master.", code="ErrorInvalidRequest")
            items = sorted(sb.view.expand(rec, start, end), key=lambda i: (i.start.instant,
                                                                              i.id))
            return paged([select(sb.view.render_instance(i, tz)) for i in items])

    @_routes(app, "/calendarView", ev_prefixes, ["GET"], "calendar_view")
    def calendar_view(cal: str | None = None) -> Response:
        user = me()[0]
        start = parse_query_instant(request.args.get("startDateTime"), "startDateTime")
        end = parse_query_instant(request.args.get("endDateTime"), "endDateTime")
        flt = parse_filter(request.args.get("$filter"))
        expand = parse_expand(request.args.get("$expand"))
        tz = out_zone()
        with sb.store.lock:
            cal_id = calendar_id(user, cal)
            items = [select(sb.view.render_instance(i, tz, expand))
                     for i in sb.view.calendar_view(user, [cal_id], start, end)
                     if matches_filter(i.record or i.master, flt)]  # type: ignore[arg-type]
        return paged(items)

    @_routes(app, "/calendarView/delta", ev_prefixes, ["GET"], "calendar_view_delta")
    def calendar_view_delta(cal: str | None = None) -> Response:
        user = me()[0]
        for unsupported in ("$select", "$expand", "$filter", "$orderby", "$search"):
            if unsupported in request.args:
                raise errors.bad_request(f"The query parameter '{unsupported}' is not "
                                         "supported with change tracking over the "
                                         "'CalendarView' resource.", code="ErrorInvalidUrlQuery")
        tz = out_zone()
        size = page_size()
        skip, delta = request.args.get("$skiptoken"), request.args.get("$deltatoken")
        if (skip or delta) and sb.take_delta_failure():
            raise errors.sync_state_not_found()
        with sb.store.lock:
            cal_id = calendar_id(user, cal)
            if skip or delta:
                items, kind, token = sb.delta.resume(user, cal_id, skip or delta or "",
                                                     "skip" if skip else "delta", tz, size)
            else:
                start = parse_query_instant(request.args.get("startDateTime"), "startDateTime")
                end = parse_query_instant(request.args.get("endDateTime"), "endDateTime")
                items, kind, token = sb.delta.start(user, cal_id, start, end, tz, size,
                                                    request.path)
        link = f"{sb.base_url}{request.path}?" + urlencode(
            {"$skiptoken" if kind == "next" else "$deltatoken": token})
        answer = {"@odata.context": f"{sb.graph_url}/$metadata#Collection(event)",
                  "@odata.nextLink" if kind == "next" else "@odata.deltaLink": link,
                  "value": items}
        return _json(answer)

    # --- subscriptions ------------------------------------------------------------------------
    @app.post(f"{V1}/subscriptions")
    def create_subscription() -> Response:
        user, client_id = me()
        return _json(sb.push.create(user, client_id, body()), 201)

    @app.get(f"{V1}/subscriptions")
    def list_subscriptions() -> Response:
        return _json({"@odata.context": f"{sb.graph_url}/$metadata#subscriptions",
                      "value": sb.push.listing(me()[0])})

    @app.get(f"{V1}/subscriptions/<sid>")
    def get_subscription(sid: str) -> Response:
        with sb.store.lock:
            return _json(sb.push.get(me()[0], sid).resource_json())

    @app.patch(f"{V1}/subscriptions/<sid>")
    def renew_subscription(sid: str) -> Response:
        return _json(sb.push.renew(me()[0], sid, body()))

    @app.delete(f"{V1}/subscriptions/<sid>")
    def delete_subscription(sid: str) -> Response:
        sb.push.delete(me()[0], sid)
        return Response(status=204)

    @app.post(f"{V1}/subscriptions/<sid>/reauthorize")
    def reauthorize_subscription(sid: str) -> Response:
        with sb.store.lock:
            sb.push.get(me()[0], sid)
        return Response(status=200)

    @app.get("/_sandbox/health")
    def health() -> Response:
        return _json({"ok": True, "base_url": sb.base_url})

    return app
