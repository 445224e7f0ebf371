"""The Microsoft Graph / identity platform emulator, driven by the real MSAL and
plain requests over HTTPS (verified against the emulator's CA bundle)."""

from __future__ import annotations

import html
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests

from server.sandbox.graph import GraphSandbox

PST = "Pacific Standard Time"
SCOPES = ["Calendars.ReadWrite"]
REDIRECT = "http://127.0.0.1:9/oauth/microsoft/callback"
PROP_ID = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name LockstepUid"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox
        assert sandbox.server_errors == []


@pytest.fixture(scope="module")
def session(graph: GraphSandbox) -> requests.Session:
    http = requests.Session()
    http.verify = graph.ca_bundle
    http.trust_env = False  # this machine sets REQUESTS_CA_BUNDLE
    return http


def msal_app(graph: GraphSandbox, session: requests.Session) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        graph.DEFAULT_CLIENT_ID, client_credential=graph.DEFAULT_CLIENT_SECRET,
        authority=graph.authority, instance_discovery=False, http_client=session)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def form_fields(page: str) -> dict[str, str]:
    """The hidden fields of a response_mode=form_post answer, as a browser would post them."""
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"name='([^']+)' value='([^']*)'", page)}


def sign_in(graph: GraphSandbox, session: requests.Session, email: str,
            response_mode: str = "form_post") -> tuple[Any, dict[str, Any]]:
    """The MSAL auth-code flow (PKCE, nonce, state) with consent approved by query."""
    app = msal_app(graph, session)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint=email,
                                       response_mode=response_mode)
    answer = session.get(flow["auth_uri"] + "&sandbox_consent=approve", allow_redirects=False)
    if response_mode == "form_post":
        assert answer.status_code == 200 and f"action='{REDIRECT}'" in answer.text, answer.text
        params = form_fields(answer.text)
    else:
        assert answer.status_code == 302, answer.text
        params = query_of(answer.headers["Location"])
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    return app, result


class Api:
    """Graph calls with one user's bearer token."""

    def __init__(self, graph: GraphSandbox, session: requests.Session, token: str) -> None:
        self.graph, self.session, self.token = graph, session, token

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        url = path if path.startswith("https://") else self.graph.graph_url + path
        return self.session.request(method, url, headers=headers, timeout=15, **kwargs)

    def all_pages(self, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        items, url = [], path
        while url:
            answer = self("GET", url, **kwargs)
            assert answer.status_code == 200, answer.text
            items += answer.json()["value"]
            url = answer.json().get("@odata.nextLink")
            kwargs.pop("params", None)
        return items


def new_user(graph: GraphSandbox, session: requests.Session,
             time_zone: str = PST) -> tuple[str, Api]:
    email = f"tech{next(_ids)}@contoso.example"
    graph.add_user(email, time_zone=time_zone)
    _, result = sign_in(graph, session, email)
    return email, Api(graph, session, result["access_token"])


def timed(day: str, start: str, end: str, tz: str = PST, **extra: Any) -> dict[str, Any]:
    return {"subject": extra.pop("subject", "Meeting"),
            "start": {"dateTime": f"{day}T{start}:00", "timeZone": tz},
            "end": {"dateTime": f"{day}T{end}:00", "timeZone": tz}, **extra}


# --- identity platform -----------------------------------------------------------------------
def test_openid_configuration_points_at_the_sandbox(graph: GraphSandbox,
                                                    session: requests.Session) -> None:
    config = session.get(f"{graph.authority}/v2.0/.well-known/openid-configuration").json()
    assert config["token_endpoint"] == f"{graph.authority}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{graph.authority}/oauth2/v2.0/authorize"
    assert session.get(f"{graph.base_url}/nosuchtenant/v2.0/.well-known/openid-configuration"
                       ).status_code == 400


def test_auth_code_flow_with_pkce_nonce_and_client_info(graph: GraphSandbox,
                                                        session: requests.Session) -> None:
    email = f"tech{next(_ids)}@contoso.example"
    user_id = graph.add_user(email, name="Ada Tech")
    app, result = sign_in(graph, session, email, response_mode="query")
    claims = result["id_token_claims"]
    assert (claims["oid"], claims["tid"], claims["preferred_username"]) == (
        user_id, graph.tenant_id, email)
    assert claims["nonce"]  # MSAL compared it with the one it sent
    assert result["refresh_token"] and result["expires_in"] > 300
    (account,) = app.get_accounts(username=email)
    assert account["home_account_id"] == f"{user_id}.{graph.tenant_id}"
    me = Api(graph, session, result["access_token"])("GET", "/me").json()
    assert (me["id"], me["mail"], me["displayName"]) == (user_id, email, "Ada Tech")


def test_token_endpoint_checks_verifier_redirect_and_secret(graph: GraphSandbox,
                                                            session: requests.Session) -> None:
    email = f"tech{next(_ids)}@contoso.example"
    graph.add_user(email)
    app = msal_app(graph, session)
    token_url = f"{graph.authority}/oauth2/v2.0/token"

    def code() -> str:
        flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint=email,
                                           response_mode="query")
        answer = session.get(flow["auth_uri"] + "&sandbox_consent=approve",
                             allow_redirects=False)
        return query_of(answer.headers["Location"])["code"]

    base = {"client_id": graph.DEFAULT_CLIENT_ID, "client_secret": graph.DEFAULT_CLIENT_SECRET,
            "grant_type": "authorization_code", "redirect_uri": REDIRECT,
            "scope": " ".join(SCOPES)}
    wrong_verifier = session.post(token_url, data={**base, "code": code(),
                                                   "code_verifier": "x" * 50})
    assert wrong_verifier.status_code == 400
    assert wrong_verifier.json()["error"] == "invalid_grant"
    assert wrong_verifier.json()["error_codes"] == [501481]
    wrong_redirect = session.post(token_url, data={**base, "code": code(),
                                                   "redirect_uri": "http://127.0.0.1:9/other"})
    assert wrong_redirect.json()["error"] == "invalid_grant"
    bad_secret = session.post(token_url, data={**base, "code": code(), "client_secret": "no"})
    assert (bad_secret.status_code, bad_secret.json()["error"]) == (401, "invalid_client")


def test_consent_page_form_post_and_unknown_user(graph: GraphSandbox,
                                                 session: requests.Session) -> None:
    email = f"tech{next(_ids)}@contoso.example"
    graph.add_user(email)
    app = msal_app(graph, session)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint=email,
                                       response_mode="form_post")
    page = session.get(flow["auth_uri"])
    assert page.status_code == 200 and "Accept" in page.text
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text).group(1)
    decision = session.post(page.url.split("?")[0] + "/decision", allow_redirects=False,
                            data={"request_id": request_id, "email": email,
                                  "decision": "approve"})
    assert decision.status_code == 200  # form_post: a self-submitting form to the client
    assert f"action='{REDIRECT}'" in decision.text
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow,
                                                                 form_fields(decision.text))

    unknown = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT,
                                          login_hint="nobody@contoso.example",
                                          response_mode="form_post")
    refused = session.get(unknown["auth_uri"] + "&sandbox_consent=approve",
                          allow_redirects=False)
    assert refused.status_code == 400 and "AADSTS50034" in refused.text


def test_silent_refresh_rotation_and_revoked_grant(graph: GraphSandbox,
                                                   session: requests.Session) -> None:
    email = f"tech{next(_ids)}@contoso.example"
    graph.add_user(email)
    app, first = sign_in(graph, session, email)
    (account,) = app.get_accounts(username=email)
    cached = app.acquire_token_silent(SCOPES, account=account)
    assert cached["access_token"] == first["access_token"]  # still valid: from the cache

    graph.expire_access_tokens(email)
    expired = Api(graph, session, first["access_token"])("GET", "/me/calendars")
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "InvalidAuthenticationToken"
    refreshed = app.acquire_token_silent(SCOPES, account=account, force_refresh=True)
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["refresh_token"] != first["refresh_token"]  # rotated
    assert Api(graph, session, refreshed["access_token"])("GET", "/me").status_code == 200

    assert graph.revoke_refresh_tokens(email) == 1
    denied = app.acquire_token_silent_with_error(SCOPES, account=account, force_refresh=True)
    assert denied["error"] == "invalid_grant"
    assert 50173 in denied["error_codes"]
    assert Api(graph, session, refreshed["access_token"])("GET", "/me").status_code == 401


def test_graph_requires_a_bearer_token(graph: GraphSandbox, session: requests.Session) -> None:
    answer = session.get(f"{graph.graph_url}/me/events")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "WWW-Authenticate" in answer.headers


# --- calendars and events ---------------------------------------------------------------------
def test_calendars_are_paged_and_read_only_ones_refuse_writes(graph: GraphSandbox,
                                                              session: requests.Session) -> None:
    email, api = new_user(graph, session)
    for n in range(6):
        graph.add_calendar(email, f"Team {n}", can_edit=n != 3)
    first = api("GET", "/me/calendars", params={"$top": "4"}).json()
    assert len(first["value"]) == 4 and "@odata.nextLink" in first
    calendars = api.all_pages("/me/calendars", params={"$top": "4"})
    assert len(calendars) == 7
    (default,) = [c for c in calendars if c["isDefaultCalendar"]]
    assert default["name"] == "Calendar" and default["id"] == graph.default_calendar_id(email)
    assert api("GET", "/me/calendar").json()["id"] == default["id"]
    user_id = api("GET", "/me").json()["id"]
    for alias in (user_id, email):
        assert len(api.all_pages(f"/users/{alias}/calendars")) == 7
    assert api("GET", "/users/someone-else@contoso.example/calendars").status_code == 403
    (read_only,) = [c for c in calendars if not c["canEdit"]]
    refused = api("POST", f"/me/calendars/{read_only['id']}/events",
                  json=timed("2026-05-04", "09:00", "10:00"))
    assert refused.status_code == 403
    assert graph.stored_events(email, read_only["id"]) == []


def test_event_crud_time_zones_etag_and_if_match(graph: GraphSandbox,
                                                 session: requests.Session) -> None:
    email, api = new_user(graph, session)
    cal = graph.default_calendar_id(email)
    created = api("POST", f"/me/calendars/{cal}/events",
                  json=timed("2026-07-01", "09:00", "10:30", showAs="tentative"))
    assert created.status_code == 201, created.text
    event = created.json()
    assert event["start"] == {"dateTime": "2026-07-01T16:00:00.0000000", "timeZone": "UTC"}
    assert event["originalStartTimeZone"] == PST and event["type"] == "singleInstance"
    assert event["@odata.etag"] == f'W/"{event["changeKey"]}"'
    local = api("GET", f"/me/events/{event['id']}",
                headers={"Prefer": 'outlook.timezone="Pacific Standard Time"'}).json()
    assert local["start"] == {"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": PST}
    iana = api("GET", f"/me/events/{event['id']}",
               headers={"Prefer": 'outlook.timezone="Europe/Berlin"'}).json()
    assert iana["end"]["dateTime"] == "2026-07-01T19:30:00.0000000"

    patched = api("PATCH", f"/me/events/{event['id']}", json={"subject": "Moved"},
                  headers={"If-Match": event["@odata.etag"]})
    assert patched.status_code == 200 and patched.json()["subject"] == "Moved"
    assert patched.json()["changeKey"] != event["changeKey"]
    stale = api("PATCH", f"/me/events/{event['id']}", json={"subject": "Lost update"},
                headers={"If-Match": event["@odata.etag"]})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "ErrorIrresolvableConflict"
    assert graph.get_event(email, event["id"])["subject"] == "Moved"

    unknown_field = api("POST", "/me/events", json={**timed("2026-07-02", "09:00", "10:00"),
                                                    "colour": "red"})
    assert unknown_field.status_code == 400
    assert unknown_field.json()["error"]["code"] == "RequestBodyRead"
    bad_zone = api("POST", "/me/events", json=timed("2026-07-02", "09:00", "10:00",
                                                     tz="Mars Standard Time"))
    assert bad_zone.json()["error"]["code"] == "TimeZoneNotSupportedException"
    not_midnight = api("POST", "/me/events", json=timed("2026-07-02", "09:00", "10:00",
                                                         isAllDay=True))
    assert not_midnight.status_code == 400
    assert len(graph.stored_events(email)) == 1  # no partial writes

    all_day = api("POST", "/me/events", json={
        "subject": "PTO", "isAllDay": True, "showAs": "oof",
        "start": {"dateTime": "2026-07-03T00:00:00", "timeZone": PST},
        "end": {"dateTime": "2026-07-04T00:00:00", "timeZone": PST}}).json()
    assert all_day["isAllDay"] and all_day["start"]["dateTime"] == "2026-07-03T00:00:00.0000000"

    assert api("DELETE", f"/me/events/{event['id']}").status_code == 204
    gone = api("GET", f"/me/events/{event['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
    assert graph.get_event(email, event["id"]) is None


def test_transaction_id_makes_a_retried_create_idempotent(graph: GraphSandbox,
                                                          session: requests.Session) -> None:
    email, api = new_user(graph, session)
    body = {**timed("2026-07-06", "13:00", "14:00"), "transactionId": "lockstep-uid-0001"}
    first = api("POST", "/me/events", json=body)
    retry = api("POST", "/me/events", json=body)
    # Graph answers the identical retry 201 as well, without creating a second event.
    assert first.status_code == 201 and retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert first.json()["transactionId"] == "lockstep-uid-0001"
    assert len(graph.stored_events(email)) == 1
    other = api("POST", "/me/events", json={**body, "subject": "Something else"})
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "ErrorDuplicateTransactionId"
    assert len(graph.stored_events(email)) == 1
    plain = api("POST", "/me/events", json=timed("2026-07-06", "15:00", "16:00")).json()
    assert "transactionId" not in plain


def test_single_value_extended_properties_expand_and_filter(graph: GraphSandbox,
                                                            session: requests.Session) -> None:
    email, api = new_user(graph, session)
    ours = api("POST", "/me/events", json={
        **timed("2026-07-07", "09:00", "10:00"),
        "singleValueExtendedProperties": [{"id": PROP_ID, "value": "uid-42@lockstep"}]}).json()
    api("POST", "/me/events", json=timed("2026-07-07", "11:00", "12:00"))
    assert "singleValueExtendedProperties" not in ours
    expanded = api("GET", f"/me/events/{ours['id']}", params={
        "$expand": f"singleValueExtendedProperties($filter=id eq '{PROP_ID}')"}).json()
    assert expanded["singleValueExtendedProperties"] == [{"id": PROP_ID,
                                                          "value": "uid-42@lockstep"}]
    found = api.all_pages("/me/events", params={
        "$filter": f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP_ID}' "
                   "and ep/value eq 'uid-42@lockstep')"})
    assert [e["id"] for e in found] == [ours["id"]]
    assert api("GET", "/me/events", params={"$filter": "subject eq 'x'"}).status_code == 400


def test_weekly_series_in_windows_zone_keeps_wall_time_across_dst(
        graph: GraphSandbox, session: requests.Session) -> None:
    email, api = new_user(graph, session)
    series = api("POST", "/me/events", json={
        **timed("2026-02-23", "09:00", "09:30", subject="Standup"),
        "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"],
                                   "firstDayOfWeek": "sunday"},
                       "range": {"type": "numbered", "startDate": "2026-02-23",
                                 "numberOfOccurrences": 4, "recurrenceTimeZone": PST}}})
    assert series.status_code == 201, series.text
    master = series.json()
    assert master["type"] == "seriesMaster" and master["recurrence"]["pattern"]["type"] == "weekly"
    view = api.all_pages("/me/calendarView", params={
        "startDateTime": "2026-02-01T00:00:00Z", "endDateTime": "2026-04-01T00:00:00Z"})
    # US DST starts 2026-03-08: 09:00 PST is 17:00Z before, 09:00 PDT is 16:00Z after.
    assert [e["start"]["dateTime"] for e in view] == [
        "2026-02-23T17:00:00.0000000", "2026-03-02T17:00:00.0000000",
        "2026-03-09T16:00:00.0000000", "2026-03-16T16:00:00.0000000"]
    assert {e["type"] for e in view} == {"occurrence"}
    assert {e["seriesMasterId"] for e in view} == {master["id"]}
    assert view[2]["originalStart"] == "2026-03-09T16:00:00Z"
    local = api.all_pages("/me/calendarView", params={
        "startDateTime": "2026-02-01T00:00:00Z", "endDateTime": "2026-04-01T00:00:00Z"},
        headers={"Prefer": f'outlook.timezone="{PST}"'})
    assert {e["start"]["dateTime"][11:16] for e in local} == {"09:00"}
    instances = api("GET", f"/me/events/{master['id']}/instances", params={
        "startDateTime": "2026-03-01T00:00:00Z", "endDateTime": "2026-03-10T00:00:00Z"}).json()
    assert [i["id"] for i in instances["value"]] == [view[1]["id"], view[2]["id"]]
    occurrence = api("GET", f"/me/events/{view[3]['id']}").json()
    assert occurrence["type"] == "occurrence" and occurrence["subject"] == "Standup"


def test_exception_and_deleted_occurrence(graph: GraphSandbox,
                                          session: requests.Session) -> None:
    email, api = new_user(graph, session)
    master = graph.create_event(email, None, {
        **timed("2026-03-02", "09:00", "09:30", subject="Standup"),
        "recurrence": {"pattern": {"type": "daily", "interval": 1},
                       "range": {"type": "endDate", "startDate": "2026-03-02",
                                 "endDate": "2026-03-06"}}})
    window = {"startDateTime": "2026-03-01T00:00:00", "endDateTime": "2026-03-08T00:00:00"}
    occurrences = api.all_pages("/me/calendarView", params=window)
    assert len(occurrences) == 5
    moved = api("PATCH", f"/me/events/{occurrences[1]['id']}", headers={
        "If-Match": occurrences[1]["@odata.etag"]}, json={
        "subject": "Standup (late)", "start": {"dateTime": "2026-03-03T11:00:00", "timeZone": PST},
        "end": {"dateTime": "2026-03-03T11:30:00", "timeZone": PST}})
    assert moved.status_code == 200, moved.text
    assert moved.json()["type"] == "exception"
    assert moved.json()["id"] == occurrences[1]["id"]
    assert api("DELETE", f"/me/events/{occurrences[3]['id']}").status_code == 204
    declined = graph.update_event(email, occurrences[4]["id"],
                                  {"responseStatus": {"response": "declined"}})
    assert declined["type"] == "exception"

    after = api.all_pages("/me/calendarView", params=window)
    assert [e["type"] for e in after] == ["occurrence", "exception", "occurrence", "exception"]
    assert after[1]["start"]["dateTime"] == "2026-03-03T19:00:00.0000000"
    assert after[1]["originalStart"] == "2026-03-03T17:00:00Z"
    assert occurrences[3]["id"] not in {e["id"] for e in after}
    assert api("GET", f"/me/events/{occurrences[3]['id']}").status_code == 404
    assert after[3]["responseStatus"]["response"] == "declined"
    stored = graph.stored_events(email)
    assert [e["type"] for e in stored] == ["seriesMaster", "exception", "exception"]
    assert len(graph.instances(email, master["id"], "2026-03-01T00:00:00Z",
                               "2026-03-08T00:00:00Z")) == 4
    graph.delete_event(email, master["id"])
    assert api.all_pages("/me/calendarView", params=window) == []


# --- delta ----------------------------------------------------------------------------------------
def delta_round(api: Api, url: str, page_size: int = 2) -> tuple[list[dict], str, int]:
    items, pages = [], 0
    while True:
        answer = api("GET", url, headers={"Prefer": f"odata.maxpagesize={page_size}"})
        assert answer.status_code == 200, answer.text
        pages += 1
        body = answer.json()
        assert len(body["value"]) <= page_size
        items += body["value"]
        if "@odata.deltaLink" in body:
            return items, body["@odata.deltaLink"], pages
        url = body["@odata.nextLink"]


def test_calendar_view_delta_pages_changes_removals_and_expiry(
        graph: GraphSandbox, session: requests.Session) -> None:
    email, api = new_user(graph, session)
    cal = graph.add_calendar(email, "Work")
    ids = [graph.create_event(email, cal, timed(f"2026-08-0{d}", "09:00", "10:00"))["id"]
           for d in range(3, 8)]
    outside = graph.create_event(email, cal, timed("2026-12-01", "09:00", "10:00"))["id"]
    graph.create_event(email, None, timed("2026-08-04", "12:00", "13:00"))  # other calendar
    start = f"/me/calendars/{cal}/calendarView/delta?startDateTime=2026-08-01T00:00:00Z" \
            "&endDateTime=2026-09-01T00:00:00Z"
    items, delta_link, pages = delta_round(api, start)
    assert pages == 3 and sorted(i["id"] for i in items) == sorted(ids)
    assert outside not in {i["id"] for i in items}

    again, delta_link, _ = delta_round(api, delta_link)
    assert again == []
    graph.update_event(email, ids[0], {"subject": "Renamed"})
    graph.delete_event(email, ids[1])
    graph.update_event(email, ids[2], {"start": {"dateTime": "2026-10-01T09:00:00",
                                                 "timeZone": PST},
                                       "end": {"dateTime": "2026-10-01T10:00:00",
                                               "timeZone": PST}})
    added = api("POST", f"/me/calendars/{cal}/events",
                json=timed("2026-08-20", "09:00", "10:00")).json()["id"]
    changes, delta_link, _ = delta_round(api, delta_link)
    updated = {i["id"] for i in changes if "@removed" not in i}
    removed = {i["id"] for i in changes if "@removed" in i}
    assert updated == {ids[0], added}
    assert removed == {ids[1], ids[2]}
    assert all(i["@removed"] == {"reason": "deleted"} for i in changes if "@removed" in i)
    assert [i["subject"] for i in changes if i["id"] == ids[0]] == ["Renamed"]

    _, pending_next, _ = delta_round(api, start, page_size=100)
    first_page = api("GET", start, headers={"Prefer": "odata.maxpagesize=1"}).json()
    graph.expire_delta_tokens(email)
    for link in (delta_link, pending_next, first_page["@odata.nextLink"]):
        gone = api("GET", link)
        assert gone.status_code == 410
        assert gone.json()["error"]["code"] in ("syncStateNotFound", "resyncRequired")
    fresh, fresh_link, _ = delta_round(api, start, page_size=10)
    assert sorted(i["id"] for i in fresh) == sorted([ids[0], ids[3], ids[4], added])
    graph.fail_delta_tokens(1)  # a one-off loss of sync state: the next token call only
    assert api("GET", fresh_link).json()["error"]["code"] == "syncStateNotFound"
    assert api("GET", fresh_link).status_code == 200
    assert api("GET", start).status_code == 200  # a new round carries no token: never failed


def test_delta_reports_new_exceptions_and_deleted_occurrences(
        graph: GraphSandbox, session: requests.Session) -> None:
    email, api = new_user(graph, session)
    graph.create_event(email, None, {
        **timed("2026-09-07", "08:00", "08:15", subject="Sync"),
        "recurrence": {"pattern": {"type": "weekly", "interval": 1,
                                   "daysOfWeek": ["monday", "wednesday"]},
                       "range": {"type": "noEnd", "startDate": "2026-09-07"}}})
    start = "/me/calendarView/delta?startDateTime=2026-09-01T00:00:00Z" \
            "&endDateTime=2026-09-30T00:00:00Z"
    items, link, _ = delta_round(api, start, page_size=50)
    assert len(items) == 7 and {i["type"] for i in items} == {"occurrence"}
    graph.update_event(email, items[2]["id"], {"subject": "Sync (moved room)"})
    graph.delete_event(email, items[4]["id"])
    changes, _, _ = delta_round(api, link)
    assert [(i["id"], i.get("type")) for i in changes if "@removed" not in i] == [
        (items[2]["id"], "exception")]
    assert [i["id"] for i in changes if "@removed" in i] == [items[4]["id"]]


# --- subscriptions -------------------------------------------------------------------------------
class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        server: Any = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = query_of(self.path)
        token = query.get("validationToken")
        with server.cond:
            server.received.append({"path": self.path.split("?")[0], "token": token,
                                    "body": json.loads(raw) if raw else None})
            server.cond.notify_all()
        if token is not None and not self.path.startswith("/refuse"):
            data = token.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if token is None and self.path.startswith("/flaky") and self.path not in server.failed:
            server.failed.add(self.path)  # the first notification fails: Graph retries
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404 if token is not None else 202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class Receiver:
    """A small webhook endpoint that answers validation and records notifications."""

    def __init__(self) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        self.server.received, self.server.cond = [], threading.Condition()
        self.server.failed = set()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def items(self, path: str) -> list[dict[str, Any]]:
        return [item for r in self.server.received if r["path"] == path and r["body"]
                for item in r["body"]["value"]]

    def wait(self, path: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.time() + timeout
        with self.server.cond:
            while len(self.items(path)) < count and time.time() < deadline:
                self.server.cond.wait(0.05)
        return self.items(path)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()


def expiry(minutes: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(minutes=minutes)).strftime(
        "%Y-%m-%dT%H:%M:%S.0000000Z")


def test_subscription_needs_the_validation_handshake(graph: GraphSandbox,
                                                     session: requests.Session,
                                                     receiver: Receiver) -> None:
    email, api = new_user(graph, session)
    body = {"changeType": "created,updated,deleted", "resource": "me/events",
            "clientState": "s3cret", "expirationDateTime": expiry(60)}
    refused = api("POST", "/subscriptions", json={
        **body, "notificationUrl": f"{receiver.url}/refuse"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "ValidationError"
    assert [r["token"] is not None for r in receiver.server.received
            if r["path"] == "/refuse"] == [True]
    too_long = api("POST", "/subscriptions", json={
        **body, "notificationUrl": f"{receiver.url}/hooks/a",
        "expirationDateTime": expiry(graph.config.subscription_max_minutes + 60)})
    assert too_long.status_code == 400
    assert api("GET", "/subscriptions").json()["value"] == []
    assert graph.subscriptions() == []


def test_notifications_lifecycle_renewal_and_expiry(graph: GraphSandbox,
                                                    session: requests.Session,
                                                    receiver: Receiver) -> None:
    email, api = new_user(graph, session)
    cal = graph.default_calendar_id(email)
    hook, life = f"/hooks/{next(_ids)}", f"/life/{next(_ids)}"
    created = api("POST", "/subscriptions", json={
        "changeType": "created,updated,deleted", "resource": f"me/calendars/{cal}/events",
        "notificationUrl": receiver.url + hook, "lifecycleNotificationUrl": receiver.url + life,
        "clientState": "s3cret", "expirationDateTime": expiry(60)})
    assert created.status_code == 201, created.text
    sub = created.json()
    validations = [r for r in receiver.server.received if r["path"] in (hook, life)]
    assert {r["path"] for r in validations} == {hook, life}
    assert all(r["token"] for r in validations)

    event = api("POST", "/me/events", json=timed("2026-08-10", "09:00", "10:00")).json()
    graph.update_event(email, event["id"], {"subject": "Changed on the Outlook side"})
    api("DELETE", f"/me/events/{event['id']}")
    items = receiver.wait(hook, 3)
    assert [i["changeType"] for i in items] == ["created", "updated", "deleted"]
    assert {i["subscriptionId"] for i in items} == {sub["id"]}
    assert {i["clientState"] for i in items} == {"s3cret"}
    assert {i["resourceData"]["id"] for i in items} == {event["id"]}
    assert graph.wait_for_notifications(3, sub["id"]) == items
    other_cal = graph.add_calendar(email, "Elsewhere")
    graph.create_event(email, other_cal, timed("2026-08-11", "09:00", "10:00"))

    renewed = api("PATCH", f"/subscriptions/{sub['id']}",
                  json={"expirationDateTime": expiry(120)})
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] > sub["expirationDateTime"]

    graph.send_lifecycle(sub["id"], "reauthorizationRequired")
    assert api("POST", f"/subscriptions/{sub['id']}/reauthorize").status_code == 200
    graph.send_lifecycle(sub["id"], "missed")
    graph.send_lifecycle(sub["id"], "subscriptionRemoved")
    lifecycle = receiver.wait(life, 3)
    assert [i["lifecycleEvent"] for i in lifecycle] == [
        "reauthorizationRequired", "missed", "subscriptionRemoved"]
    assert {i["clientState"] for i in lifecycle} == {"s3cret"}
    assert api("GET", f"/subscriptions/{sub['id']}").status_code == 404
    graph.create_event(email, None, timed("2026-08-12", "09:00", "10:00"))
    assert len(receiver.items(hook)) == 3  # nothing for the other calendar or after removal

    short = api("POST", "/subscriptions", json={
        "changeType": "created", "resource": "me/events", "clientState": "s3cret",
        "notificationUrl": receiver.url + hook, "expirationDateTime": expiry(1)}).json()
    graph.advance_clock(120)
    try:
        graph.create_event(email, None, timed("2026-08-13", "09:00", "10:00"))
        assert graph.wait_for_notifications(1, short["id"], timeout=0.5) == []
        assert api("PATCH", f"/subscriptions/{short['id']}",
                   json={"expirationDateTime": expiry(60)}).status_code == 404
    finally:
        graph.advance_clock(-120)


def test_failed_notifications_are_retried(graph: GraphSandbox, session: requests.Session,
                                         receiver: Receiver) -> None:
    email, api = new_user(graph, session)
    hook = f"/flaky/{next(_ids)}"
    sub = api("POST", "/subscriptions", json={
        "changeType": "created", "resource": "me/events", "clientState": "s3cret",
        "notificationUrl": receiver.url + hook, "expirationDateTime": expiry(30)}).json()
    event = graph.create_event(email, None, timed("2026-08-14", "09:00", "10:00"))
    (item,) = graph.wait_for_notifications(1, sub["id"])
    assert item["resourceData"]["id"] == event["id"]
    (delivery,) = [d for d in graph.deliveries() if d.subscription_id == sub["id"]]
    assert (delivery.attempts, delivery.status) == (2, 202)
    assert [r["body"] is not None for r in receiver.server.received
            if r["path"] == hook] == [False, True, True]  # validation, failure, retry


# --- faults --------------------------------------------------------------------------------------
def test_throttling_answers_429_with_retry_after(graph: GraphSandbox,
                                                 session: requests.Session) -> None:
    _, api = new_user(graph, session)
    graph.rate_limit(count=2, retry_after=3)
    for _ in range(2):
        throttled = api("GET", "/me/calendars")
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "3"
        assert throttled.json()["error"]["code"] in ("ApplicationThrottled", "TooManyRequests")
    assert api("GET", "/me/calendars").status_code == 200
    graph.server_error(count=1, status=503)
    assert api("GET", "/me/calendars").status_code == 503
    assert api("GET", "/me/calendars").status_code == 200


def test_injected_latency_slows_the_next_calls_only(graph: GraphSandbox,
                                                    session: requests.Session) -> None:
    _, api = new_user(graph, session)
    graph.add_latency(0.4, count=1, path=r"/calendars$")
    began = time.monotonic()
    assert api("GET", "/me/calendars").status_code == 200
    assert time.monotonic() - began >= 0.4
    began = time.monotonic()
    assert api("GET", "/me/calendars").status_code == 200
    assert time.monotonic() - began < 0.4


def test_change_notifications_dropped_duplicated_and_reordered(
        graph: GraphSandbox, session: requests.Session, receiver: Receiver) -> None:
    """Graph promises neither delivery nor order; the convergence runner makes that happen."""
    email, api = new_user(graph, session)
    hook = f"/misdelivered/{next(_ids)}"
    api("POST", "/subscriptions", json={
        "changeType": "created", "resource": "me/events", "notificationUrl": receiver.url + hook,
        "expirationDateTime": expiry(30)})
    made: list[str] = []

    def create(day: int) -> None:
        made.append(graph.create_event(email, None, timed(f"2026-09-{day:02d}", "09:00", "10:00"))["id"])

    try:
        graph.misdeliver_notifications(drop=1)
        create(1)  # lost
        graph.misdeliver_notifications(duplicate=1)
        create(2)  # twice
        receiver.wait(hook, 2)
        graph.misdeliver_notifications(reorder=2)
        create(3)  # 3 and 4: held, then newest first
        create(4)
        receiver.wait(hook, 4)
        graph.misdeliver_notifications(reorder=3)
        create(5)  # held until the faults are cleared
        time.sleep(0.3)
        assert len(receiver.items(hook)) == 4
    finally:
        graph.clear_notification_faults()
    got = [i["resourceData"]["id"] for i in receiver.wait(hook, 5)]
    assert got == [made[1], made[1], made[3], made[2], made[4]]
    assert any(d.error == "dropped by an injected fault" for d in graph.deliveries()
               if d.item.get("resourceData", {}).get("id") == made[0])
