"""The Google Calendar/OAuth emulator, driven by the real Google client libraries
(google-api-python-client, google-auth, google-auth-oauthlib) over HTTP."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import Flow
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from server.sandbox.google import CALENDAR_SCOPE, GoogleSandbox

NY = "America/New_York"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox
        assert sandbox.server_errors == []


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: Any = self.server
        with server.cond:
            server.received.append({"path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
            server.cond.notify_all()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class Receiver:
    """A tiny webhook endpoint that records what the emulator POSTs to it."""

    def __init__(self) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        self.server.received, self.server.cond = [], threading.Condition()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/google"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_channel(self, channel_id: str) -> list[dict[str, Any]]:
        return [r for r in self.server.received if r["headers"]["x-goog-channel-id"] == channel_id]

    def wait(self, channel_id: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.time() + timeout
        with self.server.cond:
            while len(self.for_channel(channel_id)) < count and time.time() < deadline:
                self.server.cond.wait(0.05)
        return self.for_channel(channel_id)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()


def credentials(google: GoogleSandbox, tokens: dict[str, Any]) -> Credentials:
    return Credentials(token=tokens.get("access_token"), refresh_token=tokens["refresh_token"],
                       token_uri=google.token_uri, client_id=google.DEFAULT_CLIENT_ID,
                       client_secret=google.DEFAULT_CLIENT_SECRET, scopes=[CALENDAR_SCOPE])


def service(google: GoogleSandbox, creds: Credentials) -> Any:
    return build("calendar", "v3", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": google.api_endpoint})


@pytest.fixture
def account(google: GoogleSandbox) -> tuple[str, Any, Credentials]:
    """A fresh Google account with an API client holding its tokens."""
    email = f"tech{next(_ids)}@example.com"
    google.add_user(email, time_zone=NY)
    creds = credentials(google, google.issue_tokens(email))
    return email, service(google, creds), creds


def timed(day: str, hour: int, hours: int = 1, **extra: Any) -> dict[str, Any]:
    start = datetime.fromisoformat(f"{day}T{hour:02d}:00:00")
    return {"start": {"dateTime": start.isoformat(), "timeZone": NY},
            "end": {"dateTime": (start + timedelta(hours=hours)).isoformat(), "timeZone": NY},
            **extra}


def reason(exc: HttpError) -> str:
    return json.loads(exc.content)["error"]["errors"][0]["reason"]


def list_all(api: Any, **params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow pageToken to the end; returns the items and every page."""
    pages, token = [], None
    while True:
        page = api.events().list(calendarId="primary", pageToken=token, **params).execute()
        pages.append(page)
        token = page.get("nextPageToken")
        if not token:
            return [item for p in pages for item in p.get("items", [])], pages


# --- sync -----------------------------------------------------------------------------------

def test_full_sync_pages_then_incremental_changes(google: GoogleSandbox, account: Any) -> None:
    email, api, _ = account
    made = [api.events().insert(calendarId="primary",
                                body=timed("2026-05-04", 8 + i, summary=f"job {i}")).execute()
            for i in range(7)]
    items, pages = list_all(api, maxResults=3)
    assert [len(p["items"]) for p in pages] == [3, 3, 1]
    assert all("nextSyncToken" not in p and "nextPageToken" in p for p in pages[:-1])
    assert "nextSyncToken" in pages[-1] and "nextPageToken" not in pages[-1]
    assert {i["id"] for i in items} == {e["id"] for e in made}
    token = pages[-1]["nextSyncToken"]

    added = api.events().insert(calendarId="primary", body=timed("2026-05-05", 9)).execute()
    api.events().patch(calendarId="primary", eventId=made[0]["id"],
                       body={"summary": "moved"}).execute()
    api.events().delete(calendarId="primary", eventId=made[1]["id"]).execute()
    outside = google.create_event(email, timed("2026-05-06", 10, summary="from Google UI"))

    changes, pages = list_all(api, syncToken=token, maxResults=2)
    assert "nextSyncToken" in pages[-1] and all("nextSyncToken" not in p for p in pages[:-1])
    by_id = {c["id"]: c for c in changes}
    assert set(by_id) == {added["id"], made[0]["id"], made[1]["id"], outside["id"]}
    assert by_id[made[0]["id"]]["summary"] == "moved"
    assert by_id[made[1]["id"]]["status"] == "cancelled"
    assert "summary" not in by_id[made[1]["id"]]  # deletions carry only their id

    again, _ = list_all(api, syncToken=pages[-1]["nextSyncToken"])
    assert again == []


def test_sync_token_refuses_filters(account: Any) -> None:
    _, api, _ = account
    _, pages = list_all(api)
    with pytest.raises(HttpError) as err:
        api.events().list(calendarId="primary", syncToken=pages[-1]["nextSyncToken"],
                          timeMin="2026-01-01T00:00:00Z").execute()
    assert err.value.status_code == 400
    assert "timeMin" in json.loads(err.value.content)["error"]["message"]


def test_expired_sync_token_is_410_then_full_resync(google: GoogleSandbox, account: Any) -> None:
    email, api, _ = account
    api.events().insert(calendarId="primary", body=timed("2026-06-01", 9)).execute()
    _, pages = list_all(api)
    token = pages[-1]["nextSyncToken"]

    google.fail_sync_tokens(1)  # one transient 410, token itself still good afterwards
    with pytest.raises(HttpError) as err:
        api.events().list(calendarId="primary", syncToken=token).execute()
    assert err.value.status_code == 410 and reason(err.value) == "fullSyncRequired"
    assert api.events().list(calendarId="primary", syncToken=token).execute()["items"] == []

    google.expire_sync_tokens(email)
    with pytest.raises(HttpError) as err:
        api.events().list(calendarId="primary", syncToken=token).execute()
    body = json.loads(err.value.content)["error"]
    assert body["code"] == 410 and body["errors"][0]["location"] == "syncToken"
    items, pages = list_all(api)
    assert len(items) == 1
    fresh = api.events().list(calendarId="primary", syncToken=pages[-1]["nextSyncToken"])
    assert fresh.execute()["items"] == []


def test_single_events_expansion_with_moved_and_cancelled_instances(account: Any) -> None:
    _, api, _ = account
    series = api.events().insert(calendarId="primary", body=timed(
        "2026-03-05", 9, summary="standup",
        recurrence=["RRULE:FREQ=DAILY;COUNT=8", "EXDATE;TZID=America/New_York:20260307T090000"],
    )).execute()
    _, pages = list_all(api, singleEvents=True)
    token = pages[-1]["nextSyncToken"]
    instances = api.events().instances(calendarId="primary", eventId=series["id"]).execute()
    starts = [i["start"]["dateTime"] for i in instances["items"]]
    assert len(starts) == 7 and "2026-03-07T09:00:00-05:00" not in starts
    assert "2026-03-09T09:00:00-04:00" in starts  # wall clock kept across the DST change

    moved_id, cancelled_id = instances["items"][1]["id"], instances["items"][2]["id"]
    api.events().patch(calendarId="primary", eventId=moved_id,
                       body=timed("2026-03-06", 15, summary="standup (late)")).execute()
    api.events().delete(calendarId="primary", eventId=cancelled_id).execute()

    window = {"timeMin": "2026-03-01T00:00:00Z", "timeMax": "2026-03-31T00:00:00Z"}
    items, _ = list_all(api, singleEvents=True, orderBy="startTime", **window)
    ids = [i["id"] for i in items]
    assert len(items) == 6 and cancelled_id not in ids
    moved = items[ids.index(moved_id)]
    assert moved["start"]["dateTime"] == "2026-03-06T15:00:00-05:00"
    assert moved["recurringEventId"] == series["id"]
    assert moved["originalStartTime"]["dateTime"] == "2026-03-06T09:00:00-05:00"

    with_deleted, _ = list_all(api, singleEvents=True, showDeleted=True, **window)
    gone = next(i for i in with_deleted if i["id"] == cancelled_id)
    assert gone["status"] == "cancelled" and gone["recurringEventId"] == series["id"]

    masters, _ = list_all(api)  # not expanded: the series plus its exceptions
    assert {i["id"] for i in masters} == {series["id"], moved_id, cancelled_id}
    changes, _ = list_all(api, singleEvents=True, syncToken=token)
    by_id = {c["id"]: c for c in changes}
    assert by_id[cancelled_id]["status"] == "cancelled"
    assert by_id[cancelled_id]["originalStartTime"]["dateTime"] == "2026-03-08T09:00:00-04:00"
    assert by_id[moved_id]["summary"] == "standup (late)"


# --- writes -----------------------------------------------------------------------------------

def test_if_match_stale_etag_is_412(account: Any) -> None:
    _, api, _ = account
    event = api.events().insert(calendarId="primary", body=timed("2026-07-01", 9)).execute()
    req = api.events().patch(calendarId="primary", eventId=event["id"], body={"summary": "a"})
    req.headers["If-Match"] = event["etag"]
    updated = req.execute()
    assert updated["etag"] != event["etag"] and updated["sequence"] == event["sequence"]
    stale = api.events().patch(calendarId="primary", eventId=event["id"], body={"summary": "b"})
    stale.headers["If-Match"] = event["etag"]
    with pytest.raises(HttpError) as err:
        stale.execute()
    assert err.value.status_code == 412 and reason(err.value) == "conditionNotMet"


def test_client_ids_duplicates_and_deletes(account: Any) -> None:
    _, api, _ = account
    body = timed("2026-07-02", 9, id="lockstepbooking00001")
    assert api.events().insert(calendarId="primary", body=body).execute()["id"] == body["id"]
    with pytest.raises(HttpError) as err:
        api.events().insert(calendarId="primary", body=body).execute()
    assert err.value.status_code == 409 and reason(err.value) == "duplicate"
    with pytest.raises(HttpError) as err:
        api.events().insert(calendarId="primary",
                            body=timed("2026-07-02", 9, id="Not_Ok")).execute()
    assert err.value.status_code == 400

    api.events().delete(calendarId="primary", eventId=body["id"]).execute()
    assert api.events().get(calendarId="primary", eventId=body["id"]).execute()["status"] == \
        "cancelled"
    with pytest.raises(HttpError) as err:
        api.events().delete(calendarId="primary", eventId=body["id"]).execute()
    assert err.value.status_code == 410 and reason(err.value) == "deleted"
    with pytest.raises(HttpError) as err:
        api.events().delete(calendarId="primary", eventId="neverexisted0").execute()
    error = json.loads(err.value.content)["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND"
    assert error["errors"][0] == {"domain": "global", "reason": "notFound", "message": "Not Found"}


def test_extended_properties_round_trip_and_filter(account: Any) -> None:
    _, api, _ = account
    ours = api.events().insert(calendarId="primary", body=timed(
        "2026-07-03", 9, transparency="transparent", status="tentative",
        attendees=[{"email": account[0], "responseStatus": "declined"},
                   {"email": "customer@example.org"}],
        extendedProperties={"private": {"lockstepId": "b-1", "x" * 45: "dropped"},
                            "shared": {"kind": "booking"}})).execute()
    api.events().insert(calendarId="primary", body=timed("2026-07-03", 11)).execute()
    got = api.events().get(calendarId="primary", eventId=ours["id"]).execute()
    assert got["extendedProperties"] == {"private": {"lockstepId": "b-1"},
                                         "shared": {"kind": "booking"}}
    assert got["transparency"] == "transparent" and got["status"] == "tentative"
    me = next(a for a in got["attendees"] if a.get("self"))
    assert me["responseStatus"] == "declined"
    assert got["attendees"][1]["responseStatus"] == "needsAction"

    found = api.events().list(calendarId="primary",
                              privateExtendedProperty="lockstepId=b-1").execute()["items"]
    assert [e["id"] for e in found] == [ours["id"]]
    patched = api.events().patch(calendarId="primary", eventId=ours["id"], body={
        "extendedProperties": {"private": {"rev": "2"}}}).execute()
    assert patched["extendedProperties"]["private"] == {"lockstepId": "b-1", "rev": "2"}


def test_freebusy_skips_free_declined_and_cancelled(account: Any) -> None:
    email, api, _ = account
    for body in (timed("2026-08-03", 9), timed("2026-08-03", 9, hours=2),
                 timed("2026-08-03", 13, transparency="transparent"),
                 timed("2026-08-03", 15, attendees=[{"email": email,
                                                     "responseStatus": "declined"}])):
        api.events().insert(calendarId="primary", body=body).execute()
    gone = api.events().insert(calendarId="primary", body=timed("2026-08-03", 16)).execute()
    api.events().delete(calendarId="primary", eventId=gone["id"]).execute()
    answer = api.freebusy().query(body={
        "timeMin": "2026-08-03T00:00:00Z", "timeMax": "2026-08-04T00:00:00Z",
        "items": [{"id": email}, {"id": "nobody@example.com"}]}).execute()
    assert answer["calendars"][email]["busy"] == [
        {"start": "2026-08-03T13:00:00Z", "end": "2026-08-03T15:00:00Z"}]
    assert answer["calendars"]["nobody@example.com"]["errors"][0]["reason"] == "notFound"


def test_calendar_list_pages(google: GoogleSandbox, account: Any) -> None:
    email, api, _ = account
    for n in range(4):
        google.add_calendar(email, f"Crew {n}")
    first = api.calendarList().list(maxResults=2).execute()
    assert first["items"][0]["primary"] is True and "nextSyncToken" not in first
    rest = api.calendarList().list(maxResults=2, pageToken=first["nextPageToken"]).execute()
    last = api.calendarList().list(maxResults=2, pageToken=rest["nextPageToken"]).execute()
    assert len(first["items"] + rest["items"] + last["items"]) == 5
    assert "nextSyncToken" in last and "nextPageToken" not in last


# --- push ----------------------------------------------------------------------------------------

def test_watch_delivers_sync_then_exists_until_stopped(google: GoogleSandbox, account: Any,
                                                       receiver: Receiver) -> None:
    email, api, _ = account
    before_ms = time.time() * 1000
    channel = api.events().watch(calendarId="primary", body={
        "id": f"chan-{email}", "type": "web_hook", "address": receiver.url,
        "token": "secret-token", "params": {"ttl": "3600"}}).execute()
    assert channel["kind"] == "api#channel" and channel["id"] == f"chan-{email}"
    assert channel["resourceId"] and email.split("@")[0] in channel["resourceUri"]
    expiration = int(channel["expiration"])
    assert abs(expiration - (before_ms + 3600_000)) < 5000

    first = receiver.wait(channel["id"], 1)[0]["headers"]
    assert first["x-goog-resource-state"] == "sync" and first["x-goog-message-number"] == "1"
    api.events().insert(calendarId="primary", body=timed("2026-09-01", 9)).execute()
    google.create_event(email, timed("2026-09-02", 9))
    got = receiver.wait(channel["id"], 3)
    headers = [r["headers"] for r in got]
    assert [h["x-goog-resource-state"] for h in headers] == ["sync", "exists", "exists"]
    assert [int(h["x-goog-message-number"]) for h in headers] == [1, 2, 3]
    for h in headers:
        assert h["x-goog-channel-token"] == "secret-token"
        assert h["x-goog-resource-id"] == channel["resourceId"]
        assert h["x-goog-resource-uri"] == channel["resourceUri"]
        stamp = parsedate_to_datetime(h["x-goog-channel-expiration"]).timestamp() * 1000
        assert abs(stamp - expiration) < 1000
    assert got[0]["path"] == "/hooks/google"

    api.channels().stop(body={"id": channel["id"], "resourceId": channel["resourceId"]}).execute()
    api.events().insert(calendarId="primary", body=timed("2026-09-03", 9)).execute()
    time.sleep(0.3)
    assert len(receiver.for_channel(channel["id"])) == 3
    with pytest.raises(HttpError) as err:
        api.channels().stop(body={"id": channel["id"],
                                  "resourceId": channel["resourceId"]}).execute()
    assert err.value.status_code == 404


# --- auth ---------------------------------------------------------------------------------------

def test_expired_access_token_is_refreshed_by_google_auth(google: GoogleSandbox,
                                                          account: Any) -> None:
    email, api, creds = account
    api.calendarList().list().execute()
    old = creds.token
    google.expire_access_tokens(email)
    assert api.calendarList().list().execute()["items"][0]["id"] == email
    assert creds.token != old
    statuses = [(r["path"], r["status"]) for r in google.request_log()[-3:]]
    assert statuses == [("/calendar/v3/users/me/calendarList", 401), ("/token", 200),
                        ("/calendar/v3/users/me/calendarList", 200)]


def test_revoked_refresh_token_raises_invalid_grant(google: GoogleSandbox, account: Any) -> None:
    email, api, creds = account
    api.calendarList().list().execute()
    google.revoke_refresh_token(email=email)  # also kills its access tokens: 401, refresh
    with pytest.raises(RefreshError) as err:
        api.calendarList().list().execute()
    assert "invalid_grant" in str(err.value)

    tokens = google.issue_tokens(email)
    assert requests.post(google.revoke_uri, data={"token": tokens["refresh_token"]}).ok
    again = requests.post(google.revoke_uri, data={"token": tokens["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"


def test_consent_flow_with_pkce(google: GoogleSandbox, account: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    email = account[0]
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    redirect = "http://127.0.0.1:9/oauth/google/callback"
    flow = Flow.from_client_config(google.client_config([redirect]), scopes=[CALENDAR_SCOPE],
                                   redirect_uri=redirect)
    url, state = flow.authorization_url(access_type="offline", prompt="consent",
                                        login_hint=email)
    assert "code_challenge=" in url
    page = requests.get(url, allow_redirects=False)
    assert page.status_code == 200 and email in page.text
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text).group(1)
    decided = requests.post(google.base_url + "/o/oauth2/auth/decision", allow_redirects=False,
                            data={"request_id": request_id, "email": email,
                                  "decision": "approve"})
    location = decided.headers["Location"]
    assert location.startswith(redirect) and f"state={state}" in location

    flow.fetch_token(authorization_response=location)
    creds = flow.credentials
    assert creds.refresh_token and creds.token
    assert service(google, creds).calendarList().list().execute()["items"][0]["id"] == email
    code = re.search(r"code=([^&]+)", location).group(1)
    reused = requests.post(google.token_uri, data={
        "grant_type": "authorization_code", "code": requests.utils.unquote(code),
        "redirect_uri": redirect, "client_id": google.DEFAULT_CLIENT_ID,
        "client_secret": google.DEFAULT_CLIENT_SECRET, "code_verifier": flow.code_verifier})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    url, _ = flow.authorization_url(access_type="offline", login_hint=email)
    auto = requests.get(url + "&sandbox_consent=approve", allow_redirects=False)
    wrong = requests.post(google.token_uri, auth=(google.DEFAULT_CLIENT_ID,
                                                  google.DEFAULT_CLIENT_SECRET), data={
        "grant_type": "authorization_code", "redirect_uri": redirect,
        "code": re.search(r"code=([^&]+)", auto.headers["Location"]).group(1).replace("%2F", "/"),
        "code_verifier": "not-the-verifier-" + "x" * 30})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    denied = requests.get(url + "&sandbox_consent=deny", allow_redirects=False)
    assert "error=access_denied" in denied.headers["Location"]


# --- faults ------------------------------------------------------------------------------

def test_rate_limits_surface_with_retry_after(google: GoogleSandbox, account: Any) -> None:
    _, api, _ = account
    google.rate_limit(1, retry_after=7)
    with pytest.raises(HttpError) as err:
        api.events().list(calendarId="primary").execute()
    assert err.value.status_code == 429 and err.value.resp["retry-after"] == "7"
    assert err.value.error_details[0]["reason"] == "rateLimitExceeded"

    google.rate_limit(1, status=403, reason="userRateLimitExceeded", retry_after=2)
    with pytest.raises(HttpError) as err:
        api.events().list(calendarId="primary").execute()
    assert err.value.status_code == 403 and reason(err.value) == "userRateLimitExceeded"
    assert json.loads(err.value.content)["error"]["errors"][0]["domain"] == "usageLimits"

    google.server_error(1, status=503)
    google.add_latency(0.2, count=1)
    req = api.events().list(calendarId="primary")
    req._sleep = lambda seconds: None  # the client's own backoff, not under test
    started = time.monotonic()
    assert req.execute(num_retries=2)["kind"] == "calendar#events"
    assert time.monotonic() - started >= 0.2
    assert [r["status"] for r in google.request_log("/events")[-2:]] == [503, 200]


def test_a_slow_reply_is_late_but_the_change_is_made(google: GoogleSandbox, account: Any) -> None:
    email, api, _ = account
    fault = google.add_slow_reply(0.5, count=1, path=r"/events$", method="POST")
    seen: list[list[str]] = []
    watcher = threading.Timer(0.25, lambda: seen.append([e["summary"] for e in google.stored_events(email)]))
    watcher.start()
    started = time.monotonic()
    api.events().insert(calendarId="primary", body={
        "summary": "Slow", "start": {"dateTime": "2027-01-04T10:00:00Z"},
        "end": {"dateTime": "2027-01-04T11:00:00Z"}}).execute()
    watcher.join()
    assert time.monotonic() - started >= 0.5
    assert "Slow" in seen[0]  # stored while the answer was still held back
    api.events().insert(calendarId="primary", body={
        "summary": "Quick", "start": {"dateTime": "2027-01-05T10:00:00Z"},
        "end": {"dateTime": "2027-01-05T11:00:00Z"}}).execute()
    assert (fault.hits, fault.remaining) == (1, 0)  # once only, as asked


def test_token_ttl_is_configurable() -> None:
    with GoogleSandbox(access_token_ttl=30) as short:
        short.add_user("a@example.com")
        tokens = short.issue_tokens("a@example.com")
        assert tokens["expires_in"] == 30
        api = service(short, credentials(short, tokens))
        api.calendarList().list().execute()
        short.advance_clock(31)
        api.calendarList().list().execute()  # 401, refresh, retry
        log = [(r["path"], r["status"]) for r in short.request_log()]
        assert log[1] == ("/calendar/v3/users/me/calendarList", 401)
        assert ("/token", 200) in log[2:] and log[-1][1] == 200
