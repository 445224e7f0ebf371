"""GoogleProvider against the Google emulator, through the real google-api-python-client
and google-auth: the provider contract, then what is particular to Google."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from server.providers import provider_class
from server.providers.base import (
    AuthorizationLost, ChangePage, Credentials, ProviderError, RemoteEvent,
)
from server.providers.google import GoogleConfig, GoogleProvider, event_id_for
from server.providers.google_client import retry_after_of
from server.providers.google_mapping import ical_to_series
from server.sandbox.google import GoogleSandbox
from tests.support.provider_contract import (
    CONTRACT, SERIES_BUSY, TZ, WebhookReceiver, at, busy, drain, ical, series_ical, summaries, uid,
)

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox(push_sync_delay=0.0) as sandbox:
        yield sandbox
        assert sandbox.server_errors == []


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver()
    yield rec
    rec.close()


def _suffix(original: datetime | str) -> str:
    """The emulator addresses an occurrence as <masterId>_<original start in UTC>."""
    if isinstance(original, str):
        return original.replace("-", "").replace(":", "")
    return original.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class GoogleHarness:
    """A fresh Google account (New York) whose primary calendar the provider syncs."""

    page_size = 2

    def __init__(self, sandbox: GoogleSandbox, receiver: WebhookReceiver) -> None:
        self.sandbox, self.receiver = sandbox, receiver
        self.email = f"tech{next(_ids)}@example.com"
        self.calendar_id = sandbox.add_user(self.email, time_zone=TZ)
        tokens = sandbox.issue_tokens(self.email)
        expiry = datetime.now(timezone.utc) + timedelta(seconds=tokens["expires_in"])
        self.blob = json.dumps({"refresh_token": tokens["refresh_token"],
                                "token": tokens["access_token"],
                                "expiry": expiry.isoformat(), "email": self.email})
        self.config = GoogleConfig(client_id=sandbox.DEFAULT_CLIENT_ID,
                                   client_secret=sandbox.DEFAULT_CLIENT_SECRET,
                                   token_uri=sandbox.token_uri,
                                   api_endpoint=sandbox.api_endpoint, page_size=self.page_size)
        self.provider = GoogleProvider(self.config, Credentials(self.blob))
        self.webhook_address = receiver.url

    # --- the remote side ---------------------------------------------------------------
    def _native(self, event: str | dict[str, Any]) -> tuple[dict[str, Any], list]:
        if isinstance(event, dict):
            return event, []
        return ical_to_series(event)

    def create_remote_event(self, event: str | dict[str, Any]) -> str:
        master, overrides = self._native(event)
        made = self.sandbox.create_event(self.calendar_id, master)
        for original, body in overrides:
            instance = f"{made['id']}_{_suffix(original)}"
            if body["status"] == "cancelled":
                self.sandbox.delete_event(self.calendar_id, instance)
            else:
                self.sandbox.patch_event(self.calendar_id, instance, body)
        return str(made["id"])

    def update_remote_event(self, remote_id: str, event: str | dict[str, Any]) -> None:
        self.sandbox.patch_event(self.calendar_id, remote_id, self._native(event)[0])

    def delete_remote_event(self, remote_id: str) -> None:
        self.sandbox.delete_event(self.calendar_id, remote_id)

    def move_remote_instance(self, remote_id: str, original: datetime, start: datetime,
                             end: datetime) -> None:
        self.sandbox.patch_event(self.calendar_id, f"{remote_id}_{_suffix(original)}", {
            "start": {"dateTime": start.isoformat(), "timeZone": TZ},
            "end": {"dateTime": end.isoformat(), "timeZone": TZ}})

    def cancel_remote_instance(self, remote_id: str, original: datetime) -> None:
        self.sandbox.delete_event(self.calendar_id, f"{remote_id}_{_suffix(original)}")

    def expire_cursor(self) -> None:
        self.sandbox.expire_sync_tokens(self.calendar_id)

    def revoke(self) -> None:
        self.sandbox.revoke_refresh_token(email=self.email)

    def rate_limit(self, retry_after: int) -> None:
        self.sandbox.rate_limit(1, retry_after=retry_after)

    def notifications(self, channel_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        got = self.receiver.wait(lambda r: r["headers"].get("x-goog-channel-id") == channel_id,
                                 count, timeout)
        return [{"channel_id": channel_id, "token": r["headers"].get("x-goog-channel-token"),
                 "state": r["headers"].get("x-goog-resource-state")} for r in got]


@pytest.fixture
def harness(google: GoogleSandbox, receiver: WebhookReceiver) -> Iterator[GoogleHarness]:
    yield GoogleHarness(google, receiver)
    google.clear_faults()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__.removeprefix("contract_"))
def test_contract(check: Any, harness: GoogleHarness) -> None:
    check(harness)


# --- Google specifics ---------------------------------------------------------------------------

def test_registry_and_deterministic_ids() -> None:
    assert provider_class("google") is GoogleProvider
    first = event_id_for("booking-1")
    assert first == event_id_for("booking-1") != event_id_for("booking-2")
    assert re.fullmatch(r"[a-v0-9]{5,1024}", first)


def test_calendar_list_flags(google: GoogleSandbox, harness: GoogleHarness) -> None:
    own = google.add_calendar(harness.email, "Side jobs")
    other = f"boss{next(_ids)}@example.com"
    google.add_user(other)
    google.share_calendar(other, harness.email, "reader")
    found = {c.remote_id: c for c in harness.provider.list_calendars()}
    assert found[harness.calendar_id].primary and found[harness.calendar_id].busy
    assert found[own].writable and found[own].busy and not found[own].primary
    assert not found[other].writable and not found[other].busy


def test_refreshed_token_is_handed_back(google: GoogleSandbox, harness: GoogleHarness) -> None:
    assert not harness.provider.credentials().changed
    google.expire_access_tokens(harness.email)
    drain(harness, None)  # 401, google-auth refreshes, retries
    creds = harness.provider.credentials()
    assert creds.changed
    stored, before = json.loads(creds.blob), json.loads(harness.blob)
    assert stored["token"] != before["token"]
    assert stored["refresh_token"] == before["refresh_token"] and stored["email"] == harness.email
    expiry = datetime.fromisoformat(stored["expiry"].replace("Z", "+00:00"))
    assert expiry > datetime.now(timezone.utc)
    # A provider built from the stored blob works without refreshing again.
    again = GoogleProvider(harness.config, Credentials(creds.blob))
    again.list_calendars()
    assert not again.credentials().changed


def test_expired_blob_refreshes_before_the_call(google: GoogleSandbox,
                                                harness: GoogleHarness) -> None:
    blob = json.loads(harness.blob)
    blob.update(token="stale", expiry="2020-01-01T00:00:00Z")
    provider = GoogleProvider(harness.config, json.dumps(blob))
    provider.list_calendars()
    assert provider.credentials().changed
    assert [r["status"] for r in google.request_log()[-2:]] == [200, 200]  # token, then the call


def test_unauthorised_after_refresh_is_authorization_lost(google: GoogleSandbox,
                                                          harness: GoogleHarness) -> None:
    google.add_fault("error", status=401, reason="authError", path=r"/calendarList$",
                     remaining=None)
    with pytest.raises(AuthorizationLost) as err:
        harness.provider.list_calendars()
    assert "401" in str(err.value)
    assert json.loads(harness.blob)["refresh_token"] not in str(err.value)


def test_transient_and_permanent_errors(google: GoogleSandbox, harness: GoogleHarness) -> None:
    google.rate_limit(1, status=403, reason="userRateLimitExceeded", retry_after=None)
    with pytest.raises(ProviderError) as err:
        harness.provider.list_calendars()
    assert not err.value.permanent and err.value.retry_after is None
    google.server_error(1, status=503, retry_after=3)
    with pytest.raises(ProviderError) as err:
        drain(harness, None)
    assert not err.value.permanent and err.value.retry_after == 3
    with pytest.raises(ProviderError) as err:
        list(harness.provider.list_changes("nobody@example.com", None))
    assert err.value.permanent and "404" in str(err.value) and "events.list" in str(err.value)
    with pytest.raises(ProviderError) as err:
        harness.provider.put_event(harness.calendar_id, uid(), "not iCalendar")
    assert err.value.permanent


def test_revoked_grant_via_refresh(google: GoogleSandbox, harness: GoogleHarness) -> None:
    google.fail_refresh(1)
    google.expire_access_tokens(harness.email)
    with pytest.raises(AuthorizationLost) as err:
        harness.provider.list_calendars()
    assert "invalid_grant" in str(err.value)


def test_retry_after_forms() -> None:
    assert retry_after_of({"retry-after": "7"}) == 7
    assert retry_after_of({}) is None
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    later = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 < (retry_after_of({"retry-after": later}) or 0) <= 30


def test_put_event_lands_under_its_derived_id_and_recreates_a_vanished_one(
        google: GoogleSandbox, harness: GoogleHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours,
                                         ical(ours, "Booking", at("2027-02-15", 9)))
    assert written.remote_id == event_id_for(ours)
    stored = google.get_event(harness.calendar_id, written.remote_id)
    assert stored is not None and stored["extendedProperties"]["private"]["lockstepUid"] == ours
    # Deleted on Google, then our retry without remote_id: the same id comes back to life.
    google.delete_event(harness.calendar_id, written.remote_id)
    back = harness.provider.put_event(harness.calendar_id, ours,
                                      ical(ours, "Booking", at("2027-02-15", 9)))
    assert back.remote_id == written.remote_id
    assert google.get_event(harness.calendar_id, written.remote_id)["status"] == "confirmed"
    # A remote id Google does not know (404): written under our own id instead.
    other = uid()
    fresh = harness.provider.put_event(harness.calendar_id, other,
                                       ical(other, "Other", at("2027-02-16", 9)),
                                       remote_id="neverexisted00000")
    assert fresh.remote_id == event_id_for(other)
    harness.provider.delete_event(harness.calendar_id, "lsneverexisted00")  # 404 is success


def test_put_event_switches_timed_to_all_day_and_drops_recurrence(harness: GoogleHarness) -> None:
    ours = uid()
    series = harness.provider.put_event(harness.calendar_id, ours, series_ical(ours))
    allday = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
              f"UID:{ours}\r\nDTSTAMP:20270101T000000Z\r\nDTSTART;VALUE=DATE:20270302\r\n"
              "DTEND;VALUE=DATE:20270303\r\nSUMMARY:Training\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    written = harness.provider.put_event(harness.calendar_id, ours, allday,
                                         remote_id=series.remote_id, etag=series.etag)
    (event,) = drain(harness, None)[0]
    assert event.remote_id == written.remote_id and summaries(event.ical) == ["Training"]
    assert "RRULE" not in (event.ical or "") and busy(event.ical) == ["03-02 05:00-05:00"]


def test_deleted_series_is_one_deletion(harness: GoogleHarness) -> None:
    series = harness.create_remote_event(series_ical("ext-series"))
    single = harness.create_remote_event(ical("ext-1", "one", at("2027-02-17", 9)))
    _, cursor, _ = drain(harness, None)
    harness.delete_remote_event(series)
    harness.delete_remote_event(single)
    events, _, _ = drain(harness, cursor)
    assert sorted(e.remote_id for e in events) == sorted([series, single])
    assert all(e.deleted for e in events)


def test_instance_change_on_our_series_keeps_our_uid(harness: GoogleHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours, series_ical(ours))
    _, cursor, _ = drain(harness, None)
    harness.cancel_remote_instance(written.remote_id, at("2027-03-15", 9))
    (event,) = drain(harness, cursor)[0]
    assert event.lockstep_uid == ours and event.etag == written.etag
    assert busy(event.ical) == [b for b in SERIES_BUSY if not b.startswith("03-15")]


def test_empty_calendar_full_listing_has_a_cursor(harness: GoogleHarness) -> None:
    pages = list(harness.provider.list_changes(harness.calendar_id, None))
    assert pages == [ChangePage([], cursor=pages[0].cursor, full=True)] and pages[0].cursor


def test_secrets_stay_out_of_reprs(harness: GoogleHarness) -> None:
    secret = json.loads(harness.blob)["refresh_token"]
    assert secret not in repr(harness.provider)
    assert harness.config.client_secret not in repr(harness.config)
    assert RemoteEvent("x").deleted
