"""MicrosoftProvider against the Graph emulator, through the real MSAL and HTTPS: the
provider contract, then what is particular to Microsoft."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from server.providers import provider_class
from server.providers.base import AuthorizationLost, ChangePage, Credentials, ProviderError, RemoteEvent
from server.providers.microsoft import MicrosoftProvider, transaction_id_for
from server.providers.microsoft_client import retry_after_of
from server.providers.microsoft_mapping import UID_PROPERTY, ical_to_series
from server.providers.microsoft_zones import utc_text, write_when
from server.sandbox.graph import GraphSandbox
from tests.support.microsoft_env import graph_settings, sign_in
from tests.support.provider_contract import (
    CONTRACT, SERIES_BUSY, WebhookReceiver, at, busy, drain, ical, series_ical, summaries, uid,
)

_ids = itertools.count(1)
UTC = timezone.utc


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox
        assert sandbox.server_errors == []


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver()
    yield rec
    rec.close()


def _items(request: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return list(json.loads(request["body"] or b"{}").get("value") or [])
    except ValueError:
        return []


class MicrosoftHarness:
    """A fresh mailbox (New York) whose default calendar the provider syncs."""

    page_size = 2

    def __init__(self, sandbox: GraphSandbox, receiver: WebhookReceiver) -> None:
        self.sandbox, self.receiver = sandbox, receiver
        self.email = f"tech{next(_ids)}@example.com"
        sandbox.add_user(self.email, time_zone="Eastern Standard Time")
        self.calendar_id = sandbox.default_calendar_id(self.email)
        self.settings = graph_settings(sandbox, page_size=self.page_size)
        self.blob = sign_in(sandbox, self.settings, self.email)
        self.provider = MicrosoftProvider(self.settings, Credentials(self.blob))
        self.webhook_address = receiver.url

    # --- the remote side ---------------------------------------------------------------
    def _instance(self, remote_id: str, original: datetime) -> dict[str, Any]:
        found = self.sandbox.instances(self.email, remote_id, utc_text(original - timedelta(days=1)),
                                       utc_text(original + timedelta(days=1)))
        wanted = original.astimezone(UTC)
        return next(i for i in found if datetime.fromisoformat(i["originalStart"].replace("Z", "+00:00")) == wanted)

    def create_remote_event(self, event: str | dict[str, Any]) -> str:
        if isinstance(event, dict):
            return str(self.sandbox.create_event(self.email, self.calendar_id, event)["id"])
        series = ical_to_series(event)
        made = self.sandbox.create_event(self.email, self.calendar_id, series.master)
        for original, body in series.overrides.items():
            assert isinstance(original, datetime)
            instance = self._instance(made["id"], original)
            if body is None:
                self.sandbox.delete_event(self.email, instance["id"])
            else:
                self.sandbox.update_event(self.email, instance["id"], body)
        return str(made["id"])

    def update_remote_event(self, remote_id: str, event: str | dict[str, Any]) -> None:
        body = event if isinstance(event, dict) else ical_to_series(event).master
        self.sandbox.update_event(self.email, remote_id, body)

    def delete_remote_event(self, remote_id: str) -> None:
        self.sandbox.delete_event(self.email, remote_id)

    def move_remote_instance(self, remote_id: str, original: datetime, start: datetime, end: datetime) -> None:
        instance = self._instance(remote_id, original)
        self.sandbox.update_event(self.email, instance["id"], {"start": write_when(start), "end": write_when(end)})

    def cancel_remote_instance(self, remote_id: str, original: datetime) -> None:
        self.sandbox.delete_event(self.email, self._instance(remote_id, original)["id"])

    def expire_cursor(self) -> None:
        self.sandbox.expire_delta_tokens(self.email)

    def revoke(self) -> None:
        self.sandbox.revoke_refresh_tokens(self.email)

    def rate_limit(self, retry_after: int) -> None:
        self.sandbox.rate_limit(1, retry_after=retry_after)

    def notifications(self, channel_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        """Change notifications of one subscription that reached the webhook address."""
        got = self.receiver.wait(lambda r: any(i.get("subscriptionId") == channel_id for i in _items(r)),
                                 count, timeout)
        return [{"channel_id": channel_id, "token": i.get("clientState"), "state": i.get("changeType")}
                for r in got for i in _items(r) if i.get("subscriptionId") == channel_id]


@pytest.fixture
def harness(graph: GraphSandbox, receiver: WebhookReceiver) -> Iterator[MicrosoftHarness]:
    yield MicrosoftHarness(graph, receiver)
    graph.clear_faults()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__.removeprefix("contract_"))
def test_contract(check: Any, harness: MicrosoftHarness) -> None:
    check(harness)


# --- Microsoft specifics --------------------------------------------------------------------

def test_registry_and_transaction_ids() -> None:
    assert provider_class("microsoft") is MicrosoftProvider
    first = transaction_id_for("booking-1")
    assert first == transaction_id_for("booking-1") != transaction_id_for("booking-2")
    assert first != transaction_id_for("booking-1", 1) and len(first) < 64


def test_written_event_carries_our_uid_and_transaction(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours, ical(ours, "Booking", at("2027-02-15", 9)))
    stored = next(e for e in graph.stored_events(harness.email) if e["id"] == written.remote_id)
    assert stored["transactionId"] == transaction_id_for(ours)
    assert {"id": UID_PROPERTY, "value": ours} in stored["singleValueExtendedProperties"]
    assert stored["start"]["dateTime"].startswith("2027-02-15T14:00:00")  # 09:00 New York
    # Deleted in Outlook, then our retry without remote_id: a new event, not an error.
    graph.delete_event(harness.email, written.remote_id)
    back = harness.provider.put_event(harness.calendar_id, ours, ical(ours, "Booking", at("2027-02-15", 9)))
    assert back.remote_id != written.remote_id and back.lockstep_uid == ours
    # A retry after a lost answer whose booking changed meanwhile updates the one event.
    moved = harness.provider.put_event(harness.calendar_id, ours, ical(ours, "Booking", at("2027-02-15", 11)))
    assert moved.remote_id == back.remote_id
    assert busy(moved.ical) == ["02-15 16:00-17:00"]


def test_calendar_flags(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    side = graph.add_calendar(harness.email, "Side jobs")
    shared = graph.add_calendar(harness.email, "Holidays", can_edit=False)
    found = {c.remote_id: c for c in harness.provider.list_calendars()}
    assert found[harness.calendar_id].primary and found[harness.calendar_id].busy
    assert found[side].writable and found[side].busy and not found[side].primary
    assert not found[shared].writable and not found[shared].busy


def test_refreshed_token_is_handed_back(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    harness.provider.list_calendars()
    assert not harness.provider.credentials().changed
    graph.expire_access_tokens(harness.email)
    drain(harness, None)  # 401, MSAL refreshes (forced), one retry
    creds = harness.provider.credentials()
    assert creds.changed
    before, after = json.loads(harness.blob), json.loads(creds.blob)
    assert after["msal_cache"] != before["msal_cache"] and after["username"] == harness.email
    again = MicrosoftProvider(harness.settings, Credentials(creds.blob))
    again.list_calendars()
    assert not again.credentials().changed


def test_revoked_grant_after_expiry_is_invalid_grant(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    graph.revoke_refresh_tokens(harness.email)
    with pytest.raises(AuthorizationLost) as err:
        harness.provider.list_calendars()
    assert "invalid_grant" in str(err.value)
    assert json.loads(harness.blob)["msal_cache"][:40] not in str(err.value)


def test_transient_and_permanent_errors(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    graph.server_error(1, status=503)
    with pytest.raises(ProviderError) as err:
        harness.provider.list_calendars()
    assert not err.value.permanent
    with pytest.raises(ProviderError) as err:
        list(harness.provider.list_changes("AAMkAGnothere", None))
    assert err.value.permanent and "404" in str(err.value)
    with pytest.raises(ProviderError) as err:
        harness.provider.put_event(harness.calendar_id, uid(), "not iCalendar")
    assert err.value.permanent
    rule = ical(uid(), "Odd", at("2027-02-16", 9), rrule="FREQ=MONTHLY;BYDAY=5MO")
    with pytest.raises(ProviderError) as err:
        harness.provider.put_event(harness.calendar_id, uid(), rule)
    assert err.value.permanent and "Outlook" in str(err.value)


def test_retry_after_forms() -> None:
    assert retry_after_of({"Retry-After": "7"}) == 7
    assert retry_after_of({}) is None
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 < (retry_after_of({"Retry-After": later}) or 0) <= 30


def test_deleted_series_is_one_deletion(harness: MicrosoftHarness) -> None:
    series = harness.create_remote_event(series_ical("ext-series"))
    single = harness.create_remote_event(ical("ext-1", "one", at("2027-02-17", 9)))
    _, cursor, _ = drain(harness, None)
    harness.delete_remote_event(series)
    harness.delete_remote_event(single)
    events, _, _ = drain(harness, cursor)
    assert sorted(e.remote_id for e in events) == sorted([series, single])
    assert all(e.deleted for e in events)


def test_instance_change_on_our_series_is_seen(harness: MicrosoftHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours, series_ical(ours))
    _, cursor, _ = drain(harness, None)
    harness.cancel_remote_instance(written.remote_id, at("2027-03-15", 9))
    (event,) = drain(harness, cursor)[0]
    assert event.lockstep_uid == ours and event.etag != written.etag  # the engine will restore it
    assert busy(event.ical) == [b for b in SERIES_BUSY if not b.startswith("03-15")]


def test_exception_edited_on_each_side(harness: MicrosoftHarness) -> None:
    series = harness.create_remote_event(series_ical("ext-series"))
    (listed,) = drain(harness, None)[0]
    # Outlook side: the 03-29 occurrence moves to 13:00.
    harness.move_remote_instance(series, at("2027-03-29", 9), at("2027-03-29", 13), at("2027-03-29", 14))
    (listed,) = drain(harness, None)[0]
    assert busy(listed.ical) == SERIES_BUSY[:3] + ["03-29 17:00-18:00", "04-05 13:00-14:00"]
    # Our side (an iPhone edit of the mirror): the moved 03-08 exception moves again, to 12:00.
    assert listed.ical is not None
    edited = listed.ical.replace("DTSTART;TZID=America/New_York:20270308T110000",
                                 "DTSTART;TZID=America/New_York:20270308T120000")
    edited = edited.replace("DTEND;TZID=America/New_York:20270308T120000",
                            "DTEND;TZID=America/New_York:20270308T130000")
    assert edited != listed.ical
    written = harness.provider.put_event(harness.calendar_id, "mirror-edit", edited, remote_id=series,
                                         etag=listed.etag)
    expected = ["03-01 14:00-15:00", "03-08 17:00-18:00", "03-15 13:00-14:00", "03-29 17:00-18:00",
                "04-05 13:00-14:00"]
    assert busy(written.ical) == expected
    (again,) = drain(harness, None)[0]
    assert busy(again.ical) == expected


def test_subscription_lifetime_is_capped(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    settings = graph_settings(graph, subscription_minutes=30)
    provider = MicrosoftProvider(settings, Credentials(harness.blob))
    before = datetime.now(UTC)
    watch = provider.start_watch(harness.calendar_id, harness.webhook_address, "tok", 7 * 24 * 3600)
    assert watch is not None
    assert before + timedelta(minutes=29) < watch.expires_at < before + timedelta(minutes=31)
    (sub,) = [s for s in graph.subscriptions() if s["id"] == watch.channel_id]
    assert sub["lifecycleNotificationUrl"] == harness.webhook_address and sub["clientState"] == "tok"
    provider.stop_watch(watch)


def test_empty_calendar_full_listing_has_a_cursor(harness: MicrosoftHarness) -> None:
    pages = list(harness.provider.list_changes(harness.calendar_id, None))
    assert pages == [ChangePage([], cursor=pages[0].cursor, full=True)] and pages[0].cursor


def test_secrets_stay_out_of_reprs(harness: MicrosoftHarness) -> None:
    assert "msal_cache" not in repr(harness.provider)
    assert harness.settings.client_secret not in repr(harness.settings)
    assert RemoteEvent("x").deleted


ALL_DAY = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n"
           "DTSTAMP:20270101T000000Z\r\nDTSTART;VALUE=DATE:20270302\r\nDTEND;VALUE=DATE:20270303\r\n"
           "SUMMARY:Training\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def test_all_day_is_written_in_the_mailbox_zone(graph: GraphSandbox, harness: MicrosoftHarness) -> None:
    ours = uid()
    written = harness.provider.put_event(harness.calendar_id, ours, ALL_DAY.format(uid=ours))
    stored = next(e for e in graph.stored_events(harness.email) if e["id"] == written.remote_id)
    assert stored["isAllDay"] is True and stored["originalStartTimeZone"] == "Eastern Standard Time"
    (event,) = drain(harness, None)[0]
    assert "DTSTART;VALUE=DATE:20270302" in (event.ical or "") and "DTEND;VALUE=DATE:20270303" in (event.ical or "")
    assert busy(event.ical) == ["03-02 05:00-05:00"]  # the whole local day (contract policy: all hours)


def test_series_becomes_all_day_single(harness: MicrosoftHarness) -> None:
    ours = uid()
    series = harness.provider.put_event(harness.calendar_id, ours, series_ical(ours))
    written = harness.provider.put_event(harness.calendar_id, ours, ALL_DAY.format(uid=ours),
                                         remote_id=series.remote_id, etag=series.etag)
    (event,) = drain(harness, None)[0]
    assert event.remote_id == written.remote_id and summaries(event.ical) == ["Training"]
    assert "RRULE" not in (event.ical or "")


def test_read_only_calendar_refuses_writes_without_losing_the_grant(graph: GraphSandbox,
                                                                    harness: MicrosoftHarness) -> None:
    shared = graph.add_calendar(harness.email, "Team (read only)", can_edit=False)
    with pytest.raises(ProviderError) as err:
        harness.provider.put_event(shared, uid(), ical(uid(), "Nope", at("2027-02-18", 9)))
    assert err.value.permanent and not isinstance(err.value, AuthorizationLost) and "403" in str(err.value)
    harness.provider.list_calendars()  # the grant itself is fine


def test_consent_answers_that_do_not_fit_are_refused(graph: GraphSandbox) -> None:
    from urllib.parse import urlencode

    from server.providers.oauth_microsoft import ConsentError, consent_url, exchange
    from tests.support.microsoft_env import approve

    email = f"tech{next(_ids)}@example.com"
    graph.add_user(email)
    settings = graph_settings(graph)
    redirect = "http://127.0.0.1:9/oauth/microsoft/callback"
    url, flow = consent_url(settings, redirect, "state-1", login_hint=email)
    back, params = approve(graph, url)
    assert back == redirect and params["state"] == "state-1"
    with pytest.raises(ConsentError, match="refused"):  # MSAL's ValueError on a forged state
        exchange(settings, redirect, f"{back}?{urlencode({**params, 'state': 'forged'})}", "state-1", flow)
    with pytest.raises(ConsentError, match="invalid_grant"):
        exchange(settings, redirect, f"{back}?{urlencode({**params, 'code': 'stolen'})}", "state-1", flow)
    with pytest.raises(ConsentError):  # a flow kept for another sign-in
        exchange(settings, redirect, f"{back}?{urlencode(params)}", "state-2", flow)
    blob = exchange(settings, redirect, f"{back}?{urlencode(params)}", "state-1", flow)
    assert json.loads(blob)["username"] == email


def test_stale_or_unreadable_cursor_means_a_full_listing(harness: MicrosoftHarness) -> None:
    from server.providers.base import CursorExpired

    harness.create_remote_event(ical("ext-1", "one", at("2027-02-19", 9)))
    _, cursor, _ = drain(harness, None)
    state = json.loads(cursor)
    assert state["delta"].startswith(harness.settings.graph_url)
    state["opened"] = (datetime.now(UTC) - timedelta(days=8)).isoformat()  # the window no longer rolls
    for stale in (json.dumps(state), "not a cursor"):
        with pytest.raises(CursorExpired):
            drain(harness, stale)
