"""Shapes only a provider's own app makes, through its emulator's control API, for convergence.

Google: a weekly series with one instance moved and one cancelled, an all-day
event, a tentative invitation. Outlook (Graph): the same three in Graph's
terms (a recurrence pattern in a Windows zone, an exception and a deleted
occurrence, isAllDay floating midnights, showAs tentative with
responseStatus tentativelyAccepted), and time Outlook shows that never blocks
(showAs free / workingElsewhere, declined, cancelled by its organizer). A world
of several providers makes the shapes of each (each on its own account). Every
choice comes from ``ctx.rng``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from tests.support.convergence_ops import (
    OPERATIONS, ZONE, Ctx, Op, ical_utc, local, personal_slot, slot,
)
from tests.support.convergence_world import SEPARATOR, TECH_ZONE, WINDOW_DAYS
from tests.support.remote_accounts import utc_text

WINDOWS_ZONE = "Pacific Standard Time"  # Outlook clients name TECH_ZONE so


def _sandbox(ctx: Ctx) -> Any:
    return ctx.world.side("google").sandbox  # type: ignore[attr-defined]


def _zoned(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.astimezone(ZONE).isoformat(), "timeZone": TECH_ZONE}


def google_series(ctx: Ctx) -> None:
    """A weekly series of four; one instance moved, one cancelled."""
    start, end = slot(ctx.rng, 7, 19)
    google = _sandbox(ctx)
    master = google.create_event(ctx.tech.email, {
        "summary": f"Weekly {ctx.rng.randrange(1000)}", "start": _zoned(start), "end": _zoned(end),
        "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=4"]})
    moved, cancelled = ctx.rng.sample(range(1, 4), 2)
    original = start + timedelta(weeks=moved)
    shift = timedelta(minutes=30 * ctx.rng.choice((-3, -1, 1, 2, 5)))
    instance = f"{master['id']}_{ical_utc(original)}"
    google.patch_event(ctx.tech.email, instance, {"start": _zoned(original + shift),
                                                  "end": _zoned(end + timedelta(weeks=moved) + shift)})
    google.delete_event(ctx.tech.email, f"{master['id']}_{ical_utc(start + timedelta(weeks=cancelled))}")
    ctx.note(f"google series {master['id']} from {utc_text(start)}, #{moved} moved {shift}, #{cancelled} cancelled")


def google_allday(ctx: Ctx) -> None:
    first: date = local(ctx.rng.randrange(WINDOW_DAYS - 7), 0).date()
    days = ctx.rng.choice((1, 1, 2))
    event = _sandbox(ctx).create_event(ctx.tech.email, {
        "summary": "PTO", "start": {"date": first.isoformat()},
        "end": {"date": (first + timedelta(days=days)).isoformat()}})
    ctx.note(f"google all-day {event['id']} {first} x{days}")


def google_tentative(ctx: Ctx) -> None:
    start, end = personal_slot(ctx)
    event = _sandbox(ctx).create_event(ctx.tech.email, {
        "summary": "Vendor call (maybe)", "start": _zoned(start), "end": _zoned(end),
        "attendees": [{"email": ctx.tech.email, "responseStatus": "tentative"},
                      {"email": "vendor@example.net", "organizer": True, "responseStatus": "accepted"}]})
    ctx.note(f"google tentative {event['id']} {utc_text(start)}..{utc_text(end)}")


# -- Outlook (Graph) ---------------------------------------------------------------------------
def _graph(ctx: Ctx) -> Any:
    return ctx.world.side("microsoft").graph  # type: ignore[attr-defined]


def _wall(moment: datetime) -> dict[str, str]:
    """A dateTimeTimeZone in the tech's zone, named as Outlook does."""
    return {"dateTime": moment.astimezone(ZONE).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": WINDOWS_ZONE}


def graph_series(ctx: Ctx) -> None:
    """A weekly series of four; one occurrence moved (an exception), one deleted."""
    start, end = slot(ctx.rng, 7, 19)
    graph, email = _graph(ctx), ctx.tech.email
    first = start.astimezone(ZONE)
    master = graph.create_event(email, None, {
        "subject": f"Weekly {ctx.rng.randrange(1000)}", "start": _wall(start), "end": _wall(end),
        "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]},
                       "range": {"type": "numbered", "startDate": first.date().isoformat(),
                                 "numberOfOccurrences": 4, "recurrenceTimeZone": WINDOWS_ZONE}}})
    occurrences = graph.instances(email, master["id"], utc_text(start - timedelta(days=1)), utc_text(end + timedelta(weeks=4)))
    assert len(occurrences) == 4, occurrences
    moved, cancelled = ctx.rng.sample(range(1, 4), 2)
    shift = timedelta(minutes=30 * ctx.rng.choice((-3, -1, 1, 2, 5)))
    graph.update_event(email, occurrences[moved]["id"], {
        "start": _wall(start + timedelta(weeks=moved) + shift), "end": _wall(end + timedelta(weeks=moved) + shift)})
    graph.delete_event(email, occurrences[cancelled]["id"])
    ctx.note(f"graph series {master['id'][-8:]} from {utc_text(start)}, #{moved} moved {shift}, #{cancelled} deleted")


def graph_allday(ctx: Ctx) -> None:
    first: date = local(ctx.rng.randrange(WINDOW_DAYS - 7), 0).date()
    days = ctx.rng.choice((1, 1, 2))
    event = _graph(ctx).create_event(ctx.tech.email, None, {
        "subject": "PTO", "isAllDay": True, "showAs": ctx.rng.choice(("oof", "busy")),
        "start": {"dateTime": f"{first.isoformat()}T00:00:00", "timeZone": WINDOWS_ZONE},
        "end": {"dateTime": f"{(first + timedelta(days=days)).isoformat()}T00:00:00", "timeZone": WINDOWS_ZONE}})
    ctx.note(f"graph all-day {event['id'][-8:]} {first} x{days} showAs {event['showAs']}")


def graph_tentative(ctx: Ctx) -> None:
    """An invitation from a vendor the tech answered 'tentative' (Outlook shows it tentative)."""
    start, end = personal_slot(ctx)
    event = _graph(ctx).create_event(ctx.tech.email, None, {
        "subject": "Vendor call (maybe)", "start": _wall(start), "end": _wall(end), "showAs": "tentative",
        "responseStatus": {"response": "tentativelyAccepted", "time": "2027-01-15T10:00:00Z"},
        "organizer": {"emailAddress": {"name": "Vendor", "address": "vendor@example.net"}},
        "attendees": [{"type": "required", "emailAddress": {"name": ctx.tech.user, "address": ctx.tech.email},
                       "status": {"response": "tentativelyAccepted", "time": "2027-01-15T10:00:00Z"}}]})
    ctx.note(f"graph tentative {event['id'][-8:]} {utc_text(start)}..{utc_text(end)}")


def graph_not_blocking(ctx: Ctx) -> None:
    """Time Outlook shows but that never blocks: free, working elsewhere, a declined invitation,
    a meeting its organizer cancelled."""
    start, end = personal_slot(ctx)
    kind = ctx.rng.choice(("free", "workingElsewhere", "declined", "cancelled"))
    body: dict[str, Any] = {"subject": f"FYI {kind}", "start": _wall(start), "end": _wall(end)}
    if kind in ("free", "workingElsewhere"):
        body["showAs"] = kind
    else:
        body.update({"organizer": {"emailAddress": {"name": "Vendor", "address": "vendor@example.net"}},
                     "responseStatus": {"response": "declined" if kind == "declined" else "accepted",
                                        "time": "2027-01-15T10:00:00Z"},
                     "isCancelled": kind == "cancelled"})
    event = _graph(ctx).create_event(ctx.tech.email, None, body)
    ctx.note(f"graph {kind} {event['id'][-8:]} {utc_text(start)}..{utc_text(end)}")


SHAPES: dict[str, list[tuple[Op, int]]] = {
    "google": [(google_series, 1), (google_allday, 1), (google_tentative, 1)],
    "microsoft": [(graph_series, 1), (graph_allday, 1), (graph_tentative, 1), (graph_not_blocking, 1)],
}


def shapes_for(kind: str) -> list[tuple[Op, int]]:
    """The provider-only shapes of a world kind ("google", or "google+microsoft": both sets)."""
    return [shape for provider in kind.split(SEPARATOR) for shape in SHAPES.get(provider, [])]


def operations_for(kind: str) -> list[tuple[Op, int]]:
    """Every side's operations, plus the shapes of each provider's own app."""
    return OPERATIONS + shapes_for(kind)
