"""A tiny "Google Calendar" web page on the emulator, for people trying Lockstep.

``/_sandbox/calendar/<email>`` lists the account's primary-calendar events of
the coming two weeks and has a form to add or delete one. Changes go through
the same service as API writes, so watch channels fire and Lockstep syncs them
exactly as it would a change made in the real Google Calendar.
"""

from __future__ import annotations

import html
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from flask import Flask, Response, redirect, request

if TYPE_CHECKING:
    from server.sandbox.google import GoogleSandbox

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Calendar of {who} (Google sandbox)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:1.5rem auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td,th{{padding:.3rem;border-bottom:1px solid #ddd;text-align:left}}
form.add{{display:grid;gap:.4rem;grid-template-columns:repeat(auto-fit,minmax(8rem,1fr));margin:1rem 0}}
.note{{color:#555;font-size:.9rem}}</style></head><body>
<h1>Google Calendar <small>(sandbox)</small></h1><p>{who} &middot; times in {tz}</p>
<h2>Add a personal event</h2>
<form class="add" method="post">
<label>Title <input name="summary" value="Dentist" required></label>
<label>Day <input type="date" name="day" value="{today}" required></label>
<label>From <input type="time" name="start" value="10:00" required></label>
<label>To <input type="time" name="end" value="11:00" required></label>
<label><input type="checkbox" name="free" value="1"> Show me as free</label>
<button>Add event</button></form>
<p class="note">Lockstep hears about it through a push notification and the slot
disappears from availability within a second or two.</p>
<h2>Next two weeks</h2><table><tr><th>When</th><th>What</th><th></th></tr>{rows}</table>
</body></html>"""


def register(app: Flask, sb: GoogleSandbox) -> None:
    @app.get("/_sandbox/calendar/<email>")
    def calendar_page(email: str) -> Any:
        if email not in sb.store.users:
            return Response(f"No account {email} in this sandbox.", 404, content_type="text/plain")
        zone = _zone(sb, email)
        rows = "".join(_row(email, event, zone) for event in _upcoming(sb, email, zone))
        body = PAGE.format(who=html.escape(email), tz=html.escape(str(zone)),
                           today=datetime.now(zone).date().isoformat(),
                           rows=rows or '<tr><td colspan="3">Nothing yet.</td></tr>')
        return Response(body, content_type="text/html; charset=utf-8")

    @app.post("/_sandbox/calendar/<email>")
    def add_event(email: str) -> Any:
        if email not in sb.store.users:
            return Response(f"No account {email} in this sandbox.", 404, content_type="text/plain")
        zone = _zone(sb, email)
        try:
            day = date.fromisoformat(request.form["day"])
            start = datetime.combine(day, _clock(request.form["start"]), zone)
            end = datetime.combine(day, _clock(request.form["end"]), zone)
        except (KeyError, ValueError):
            return Response("Give a day (YYYY-MM-DD) and times (HH:MM).", 400, content_type="text/plain")
        if end <= start:
            return Response("The event must end after it starts.", 400, content_type="text/plain")
        sb.create_event(email, {
            "summary": request.form.get("summary", "").strip()[:200] or "Busy",
            "start": {"dateTime": start.isoformat(), "timeZone": str(zone)},
            "end": {"dateTime": end.isoformat(), "timeZone": str(zone)},
            "transparency": "transparent" if request.form.get("free") else "opaque"})
        return redirect(f"/_sandbox/calendar/{quote(email)}", 303)

    @app.post("/_sandbox/calendar/<email>/delete/<event_id>")
    def delete_event(email: str, event_id: str) -> Any:
        if email not in sb.store.users:
            return Response(f"No account {email} in this sandbox.", 404, content_type="text/plain")
        sb.delete_event(email, event_id)
        return redirect(f"/_sandbox/calendar/{quote(email)}", 303)


def _zone(sb: GoogleSandbox, email: str) -> ZoneInfo:
    with sb.store.lock:
        return ZoneInfo(sb.store.calendars[sb.store.users[email].primary].time_zone)


def _clock(text: str) -> Any:
    return datetime.strptime(text, "%H:%M").time()


def _upcoming(sb: GoogleSandbox, email: str, zone: ZoneInfo) -> list[dict[str, Any]]:
    """Single events and series masters starting before two weeks from now, soonest first."""
    now = datetime.now(timezone.utc)
    horizon = now + timedelta(days=14)
    found = []
    for event in sb.stored_events(email):
        start = _moment(event.get("start", {}), zone)
        end = _moment(event.get("end", {}), zone)
        if start is None or end is None:
            continue
        if event.get("recurrence") or (end > now and start < horizon):
            found.append((start, event))
    return [event for _, event in sorted(found, key=lambda pair: pair[0])]


def _moment(value: dict[str, str], zone: ZoneInfo) -> datetime | None:
    if "dateTime" in value:
        return datetime.fromisoformat(value["dateTime"].replace("Z", "+00:00"))
    if "date" in value:
        return datetime.combine(date.fromisoformat(value["date"]), datetime.min.time(), zone)
    return None


def _row(email: str, event: dict[str, Any], zone: ZoneInfo) -> str:
    start = _moment(event["start"], zone)
    assert start is not None
    when = (start.date().isoformat() if "date" in event["start"]
            else start.astimezone(zone).strftime("%a %d %b %H:%M"))
    if event.get("recurrence"):
        when += " (repeats)"
    what = html.escape(event.get("summary", "(no title)"))
    if event.get("transparency") == "transparent":
        what += " <small>(free)</small>"
    action = f"/_sandbox/calendar/{quote(email)}/delete/{quote(event['id'])}"
    return (f"<tr><td>{html.escape(when)}</td><td>{what}</td>"
            f'<td><form method="post" action="{html.escape(action)}"><button>Delete</button></form></td></tr>')
