"""/api/v1: free/busy, availability, bookings, techs, health."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import wraps
from typing import Any, Callable

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from server import bookings
from server.api.params import ParamError, minutes, text, time_range, timestamp
from server.credentials import CredentialVerifier, token_query
from server.db import Database, Query, Rows, plain_rows
from server.freebusy import index as busy_index
from server.freebusy.availability import free_slots
from server.freebusy.epochs import EpochSpan, epoch_of, rfc3339
from server.freebusy.policy import Policy
from server.freebusy.vfreebusy import vfreebusy
from server.models import Connection, Tech
from server.principals import SCOPE_BOOKINGS, SCOPE_FREEBUSY, TOKEN_SCOPES

UTC = timezone.utc
MAX_JSON_BYTES = 64 * 1024


def error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error=code, message=message, **extra), status


def create_api(database: Database) -> Blueprint:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")
    verifier = CredentialVerifier(database)

    def requires(scope: str, *, reads: Callable[[], list[Query]] | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """The bearer token is checked against the database on every request (a revoked token
        fails at once on every node). ``reads`` builds the view's own SELECTs from the request;
        they travel with the token's select in one read (``Database.read_many``: one round trip
        on PostgreSQL) and the view gets their rows as its first argument. A bad parameter is
        reported only to a caller whose token holds."""
        def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
            @wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                header = request.headers.get("Authorization", "")
                if not header.lower().startswith("bearer "):
                    return _unauthorized("send Authorization: Bearer <token from lockstep token create>")
                name, _, secret = header[7:].strip().rpartition(".")
                if not (name and secret):
                    return _unauthorized("the bearer token is not valid")
                queries: list[Query] = []
                refusal: Exception | None = None
                try:
                    queries = reads() if reads is not None else []
                except (ParamError, UnknownTech) as exc:
                    refusal = exc
                token_rows, *rows = database.read_many([token_query(name), *queries])
                principal = verifier.check_token(token_rows, name, secret)
                if principal is None:
                    return _unauthorized("the bearer token is not valid")
                if TOKEN_SCOPES.index(principal.scope) < TOKEN_SCOPES.index(scope):
                    return error(403, "forbidden", f"this token has scope {principal.scope!r}; {scope!r} is needed")
                if refusal is not None:
                    raise refusal
                g.token = principal.name
                return view(rows, *args, **kwargs) if reads is not None else view(*args, **kwargs)
            return wrapper
        return decorate

    @api.errorhandler(ParamError)
    def bad_param(exc: ParamError):  # type: ignore[no-untyped-def]
        return error(400, "invalid_parameter", str(exc), field=exc.field)

    @api.errorhandler(UnknownTech)
    def unknown_tech(exc: UnknownTech):  # type: ignore[no-untyped-def]
        return error(404, "unknown_tech", f"no tech named {exc.args[0]!r}", field="tech")

    @api.errorhandler(bookings.BookingError)
    def booking_refused(exc: bookings.BookingError):  # type: ignore[no-untyped-def]
        extra = {"conflicts": [_span(s) for s in exc.conflicts]} if exc.code == "conflict" else {}
        return error(exc.status, exc.code, exc.message, **extra)

    def freebusy_reads() -> list[Query]:
        start, end = time_range(request.args.get("start"), request.args.get("end"))
        g.techs, g.window = _tech_names(), (epoch_of(start), epoch_of(end))
        return [busy_index.policies_query(g.techs), busy_index.range_scan(g.techs, *g.window),
                sync_health_query(g.techs)]

    @api.get("/freebusy")
    @requires(SCOPE_FREEBUSY, reads=freebusy_reads)
    def freebusy(rows: list[Rows]):  # type: ignore[no-untyped-def]
        techs, (a, b) = g.techs, g.window
        policies = _policies(busy_index.policies_from(rows[0]), techs)
        spans = busy_index.merge_scan(rows[1], policies, a, b)
        if request.accept_mimetypes.best_match(["application/json", "text/calendar"]) == "text/calendar":
            return Response(vfreebusy(a, b, {t: spans[t] for t in techs}), mimetype="text/calendar")
        health = sync_health_from(rows[2], techs)
        answer = {
            tech: {"busy": _epoch_spans(spans[tech][0]), "tentative": _epoch_spans(spans[tech][1]),
                   "sync": health[tech]}
            for tech in techs
        }
        return _json({"start": rfc3339(a), "end": rfc3339(b), "techs": answer})

    def availability_reads() -> list[Query]:
        start, end = time_range(request.args.get("start"), request.args.get("end"))
        g.window = (start, end)
        g.duration = timedelta(minutes=minutes(request.args.get("duration"), "duration"))
        g.step = timedelta(minutes=minutes(request.args.get("step"), "step", default=15))
        g.techs = _tech_names()
        return [busy_index.policies_query(g.techs)]

    @api.get("/availability")
    @requires(SCOPE_FREEBUSY, reads=availability_reads)
    def availability(rows: list[Rows]):  # type: ignore[no-untyped-def]
        (start, end), techs, now = g.window, g.techs, datetime.now(UTC)
        policies = _policies(busy_index.policies_from(rows[0]), techs)
        margin = timedelta(minutes=max(p.buffer_before_min + p.buffer_after_min for p in policies.values()) + 1)
        a, b = epoch_of(start - margin), epoch_of(end + margin)
        [scan] = database.read_many([busy_index.range_scan(techs, a, b)])
        spans = busy_index.merge_scan(scan, policies, a, b)
        answer = {
            tech: {"slots": [_span(s) for s in free_slots(policies[tech], busy_index.as_datetimes(spans[tech][0]), start, end,
                                                         g.duration, g.step, now)]}
            for tech in techs
        }
        return jsonify(techs=answer)

    @api.post("/bookings")
    @requires(SCOPE_BOOKINGS)
    def create_booking():  # type: ignore[no-untyped-def]
        body = _json_body()
        start, end = time_range(body.get("start"), body.get("end"))
        tech = text(body, "tech", required=True, limit=64)
        customer = body.get("customer") or {}
        if not isinstance(customer, dict):
            raise ParamError("customer", "must be an object with name, email, phone")
        booking = bookings.BookingRequest(
            tech=tech, start=start, end=end,
            summary=text(body, "summary", required=True, limit=500),
            description=text(body, "description", limit=8000),
            location=text(body, "location", limit=500),
            customer={k: text(customer, k, limit=320) for k in ("name", "email", "phone")},
        )
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise ParamError("Idempotency-Key", "at most 200 characters")
        answer = bookings.create_booking(database, booking, token=g.token, idempotency_key=key)
        return jsonify(answer.body), answer.status

    @api.patch("/bookings/<uid>")
    @requires(SCOPE_BOOKINGS)
    def move_booking(uid: str):  # type: ignore[no-untyped-def]
        body = _json_body()
        tech = _booking_tech(uid)
        changes: dict[str, Any] = {}
        for field in ("start", "end"):
            if field in body:
                changes[field] = timestamp(body[field], field)
        for field in ("summary", "description", "location"):
            if field in body:
                changes[field] = text(body, field, required=field == "summary")
        answer = bookings.move_booking(database, tech, uid, changes)
        return jsonify(answer.body), answer.status

    @api.delete("/bookings/<uid>")
    @requires(SCOPE_BOOKINGS)
    def cancel_booking(uid: str):  # type: ignore[no-untyped-def]
        bookings.cancel_booking(database, _booking_tech(uid), uid)
        return "", 204

    @api.get("/bookings/<uid>.ics")
    @requires("freebusy")
    def booking_ics(uid: str):  # type: ignore[no-untyped-def]
        found = bookings.find_booking(database, uid)
        if found is None:
            return error(404, "unknown_booking", f"no booking {uid!r}")
        return Response(found[1], mimetype="text/calendar",
                        headers={"Content-Disposition": f'attachment; filename="{uid}.ics"'})

    @api.get("/techs")
    @requires("freebusy")
    def techs():  # type: ignore[no-untyped-def]
        with database.read() as session:
            rows = session.scalars(select(Tech).order_by(Tech.username)).all()
            return jsonify(techs=[{"user": t.username, "name": t.name, "timezone": t.timezone,
                                   "working_hours": t.working_hours} for t in rows])

    @api.get("/health")
    @requires("freebusy")
    def health():  # type: ignore[no-untyped-def]
        with database.read() as session:
            names = list(session.scalars(select(Tech.username).order_by(Tech.username)))
            health = sync_health(session, names)
        return jsonify(status="ok", techs=health)

    def _booking_tech(uid: str) -> str:
        found = bookings.find_booking(database, uid)
        if found is None:
            raise bookings.BookingError(404, "unknown_booking", f"no booking {uid!r}")
        return found[0]

    return api


def sync_health(session: Session, techs: list[str]) -> dict[str, dict[str, Any]]:
    """Per tech: the worst state of their connections (not_connected without any), last success."""
    return sync_health_from(plain_rows(session, *sync_health_query(techs)), techs)


def sync_health_query(techs: list[str]) -> Query:
    return _CONNECTIONS, {"techs": techs}


def sync_health_from(rows: Rows, techs: list[str]) -> dict[str, dict[str, Any]]:
    rank = {"ok": 0, "degraded": 1, "needs_reauth": 2}
    health: dict[str, dict[str, Any]] = {t: {"state": "not_connected", "last_success": None} for t in techs}
    for tech, state, last_success in rows:
        current = health[tech]
        if current["state"] == "not_connected" or rank.get(state, 1) > rank.get(current["state"], 0):
            current["state"] = state
        if last_success is not None:
            stamp = bookings.rfc3339(_as_utc(last_success))
            current["last_success"] = max(filter(None, [current["last_success"], stamp]))
    return health


_CONNECTIONS = (
    select(Tech.username, Connection.state, Connection.last_success)
    .join(Connection, Connection.tech_id == Tech.id)
    .where(Tech.username.in_(bindparam("techs", expanding=True)))
)


def _as_utc(moment: datetime | str) -> datetime:
    """A stored timestamp as the driver gives it (SQLite: ISO text) made aware UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _policies(policies: dict[str, Policy], techs: list[str]) -> dict[str, Policy]:
    unknown = [t for t in techs if t not in policies]
    if unknown:
        raise UnknownTech(unknown[0])
    return policies


class UnknownTech(LookupError):
    pass


def _tech_names() -> list[str]:
    names = request.args.getlist("tech")
    if not names:
        raise ParamError("tech", "name at least one tech (repeat tech= for several)")
    if len(names) > 500:
        raise ParamError("tech", "at most 500 techs per request")
    return list(dict.fromkeys(names))


def _json_body() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise bookings.BookingError(413, "too_large", f"the request body is {request.content_length} bytes; "
                                    f"at most {MAX_JSON_BYTES} bytes are accepted. Nothing was stored.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ParamError("body", "must be a JSON object (Content-Type: application/json)")
    return body


def _span(span: tuple[datetime, datetime]) -> dict[str, str]:
    return {"start": bookings.rfc3339(span[0]), "end": bookings.rfc3339(span[1])}


def _epoch_spans(spans: list[EpochSpan]) -> list[dict[str, str]]:
    return [{"start": rfc3339(a), "end": rfc3339(b)} for a, b in spans]


def _json(body: dict[str, Any]) -> Response:
    """Compact JSON in the key order given (jsonify also sorts every key of every period)."""
    return Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")


def _unauthorized(message: str) -> tuple[Response, int]:
    response, status = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="Lockstep"'
    return response, status

