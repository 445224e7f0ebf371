"""Reading a provider's far end back, for the convergence runner: one observer per provider.

The runner and its invariants compare every side in provider-free terms: a
stored remote event is a :class:`RemoteItem` (which UID the mirror must give
it, its title, its times), and the provider's own expansion of the window is a
list of fb_reference descriptions. Each observer reads its emulator in-process
(the store and the code that serves calendarView / events.list), independently
of Lockstep's own mapping, except for the lookup of the id Lockstep stamps on
its writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from server.providers.microsoft_mapping import lockstep_uid_of
from server.sandbox.google import GoogleSandbox
from server.sandbox.google_events import Params
from server.sandbox.graph import GraphSandbox
from tests.support import fb_reference as ref
from tests.support.remote_accounts import RemoteAccount, utc_text

UTC = timezone.utc
Span = tuple[datetime, datetime]
Event = dict[str, Any]


@dataclass(frozen=True)
class RemoteItem:
    """One stored remote event (single, series master or exception), as the invariants see it."""

    id: str
    uid: str  # our booking's uid, or the UID the mirror must give this personal event
    summary: str
    version: str  # etag / changeKey: changes with every edit (quiescence compares it)
    span: Span | None  # UTC start and end of a timed event; None for all-day
    recurring: bool  # a series master
    part: bool  # an exception of a series: belongs to its master's UID, not counted alone


class RemoteObserver:
    """What the runner reads of one provider; subclasses say how its events look."""

    def stored(self, email: str) -> list[Event]:
        """Live stored events of the tech's primary calendar, as the provider's API shows them."""
        raise NotImplementedError

    def instances(self, email: str, start: datetime, end: datetime) -> list[Event]:
        """The provider's own expansion of ``[start, end)`` into single instances."""
        raise NotImplementedError

    def booking_uid(self, event: Event) -> str:
        raise NotImplementedError

    def times(self, event: Event) -> Span | None:
        raise NotImplementedError

    def to_spec(self, instance: Event) -> ref.EventSpec | None:
        """One instance as a description; None when it does not exist (cancelled)."""
        raise NotImplementedError

    def describe(self, event: Event) -> tuple[str, str, bool, bool]:
        """(summary, version, recurring, part of a series)."""
        raise NotImplementedError

    # -- provider-free ---------------------------------------------------------------------
    def item(self, event: Event) -> RemoteItem:
        summary, version, recurring, part = self.describe(event)
        return RemoteItem(str(event["id"]), self.booking_uid(event), summary, version, self.times(event),
                          recurring, part)

    def items(self, email: str) -> list[RemoteItem]:
        return [self.item(event) for event in self.stored(email)]

    def specs(self, email: str, start: datetime, end: datetime) -> list[ref.EventSpec]:
        return [spec for spec in (self.to_spec(i) for i in self.instances(email, start, end)) if spec]


# -- Google ---------------------------------------------------------------------------------------
_GOOGLE_RESPONSES = {"accepted": "ACCEPTED", "declined": "DECLINED", "tentative": "TENTATIVE",
                     "needsAction": "NEEDS-ACTION"}


class GoogleObserver(RemoteObserver):
    """Google Calendar: events.list singleEvents=true, extendedProperties.private.lockstepUid."""

    def __init__(self, google: GoogleSandbox) -> None:
        self.google = google

    def stored(self, email: str) -> list[Event]:
        return list(self.google.stored_events(email))

    def instances(self, email: str, start: datetime, end: datetime) -> list[Event]:
        params = Params({"singleEvents": "true", "maxResults": "2500", "timeMin": utc_text(start),
                         "timeMax": utc_text(end)})
        page = self.google.listings.list_events(email, email, params)
        assert not page.get("nextPageToken"), "more instances than one page holds"
        return list(page.get("items", []))

    def booking_uid(self, event: Event) -> str:
        return str((event.get("extendedProperties") or {}).get("private", {}).get("lockstepUid")
                   or event.get("iCalUID") or event["id"])

    def times(self, event: Event) -> Span | None:
        if "dateTime" not in event.get("start", {}):
            return None
        return _instant(event["start"]["dateTime"]), _instant(event["end"]["dateTime"])

    def describe(self, event: Event) -> tuple[str, str, bool, bool]:
        return (str(event.get("summary", "")), str(event.get("etag", "")), bool(event.get("recurrence")),
                bool(event.get("recurringEventId")))

    def to_spec(self, instance: Event) -> ref.EventSpec | None:
        if instance.get("status") == "cancelled":
            return None

        def when(value: dict[str, str]) -> date | datetime:
            if "date" in value:
                return date.fromisoformat(value["date"])
            return _instant(value["dateTime"]).replace(tzinfo=None)

        start, end = when(instance["start"]), when(instance["end"])
        own = next((a for a in instance.get("attendees", []) if a.get("self")), None)
        return ref.EventSpec(
            uid=str(instance["id"]), frame="utc" if isinstance(start, datetime) else "date", start=start,
            length=end - start,  # type: ignore[operator]
            status={"tentative": "TENTATIVE"}.get(instance.get("status", ""), None),
            transp="TRANSPARENT" if instance.get("transparency") == "transparent" else None,
            partstat=_GOOGLE_RESPONSES.get(own.get("responseStatus", "needsAction"), "NEEDS-ACTION")
            if own else None)


# -- Microsoft Graph ----------------------------------------------------------------------------
# The mailbox owner's answer (responseStatus.response) as a PARTSTAT; organizer/none: not an attendee.
_GRAPH_RESPONSES = {"accepted": "ACCEPTED", "tentativelyAccepted": "TENTATIVE", "declined": "DECLINED",
                    "notResponded": "NEEDS-ACTION"}
_GRAPH_FREE = ("free", "workingElsewhere")  # showAs values that never block


class GraphObserver(RemoteObserver):
    """Outlook: calendarView of the default calendar, the single-value extended property."""

    def __init__(self, graph: GraphSandbox) -> None:
        self.graph = graph

    def stored(self, email: str) -> list[Event]:
        return self.graph.stored_events(email, self.graph.default_calendar_id(email))

    def instances(self, email: str, start: datetime, end: datetime) -> list[Event]:
        graph = self.graph
        with graph.store.lock:
            found = graph.view.calendar_view(email, [graph.default_calendar_id(email)],
                                             start.astimezone(UTC), end.astimezone(UTC))
            return [graph.view.render_instance(i, "UTC", []) for i in found]

    def booking_uid(self, event: Event) -> str:
        return str(lockstep_uid_of(event) or event.get("iCalUId") or event["id"])

    def times(self, event: Event) -> Span | None:
        if event.get("isAllDay"):
            return None
        return _graph_utc(event["start"]), _graph_utc(event["end"])

    def describe(self, event: Event) -> tuple[str, str, bool, bool]:
        return (str(event.get("subject", "")), str(event.get("changeKey", "")),
                event.get("type") == "seriesMaster", event.get("type") == "exception")

    def to_spec(self, instance: Event) -> ref.EventSpec | None:
        if instance.get("isCancelled"):
            return None
        start: date | datetime
        all_day = bool(instance.get("isAllDay"))
        if all_day:  # floating midnights: the dates are the days
            start = date.fromisoformat(instance["start"]["dateTime"][:10])
            length = date.fromisoformat(instance["end"]["dateTime"][:10]) - start
        else:
            start = _graph_utc(instance["start"]).replace(tzinfo=None)
            length = _graph_utc(instance["end"]).replace(tzinfo=None) - start
        show_as = str(instance.get("showAs") or "busy")
        response = str((instance.get("responseStatus") or {}).get("response") or "none")
        return ref.EventSpec(
            uid=str(instance["id"]), frame="date" if all_day else "utc", start=start, length=length,
            status="TENTATIVE" if show_as == "tentative" else None,
            transp="TRANSPARENT" if show_as in _GRAPH_FREE else None,
            partstat=_GRAPH_RESPONSES.get(response))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _graph_utc(value: dict[str, str]) -> datetime:
    """A dateTimeTimeZone read with Prefer outlook.timezone="UTC" (as stored_events renders)."""
    assert value.get("timeZone") == "UTC", value
    return datetime.fromisoformat(value["dateTime"][:19]).replace(tzinfo=UTC)


OBSERVERS: dict[str, Callable[[Any], RemoteObserver]] = {
    "google": lambda account: GoogleObserver(account.sandbox),
    "microsoft": lambda account: GraphObserver(account.graph),
}


def observer_for(account: RemoteAccount) -> RemoteObserver:
    """The observer of ``account``'s provider (LookupError for one the runner cannot read yet)."""
    make = OBSERVERS.get(account.provider)
    if make is None:
        raise LookupError(f"convergence observation of {account.provider} is not written yet")
    return make(account)

