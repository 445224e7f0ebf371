"""Listings of the emulator: events.list (full and incremental), events.instances,
calendarList, calendars.get and freeBusy.query.

A listing is computed once, when its first page is asked for, and the rest is
kept server-side behind ``nextPageToken``; the ``nextSyncToken`` minted at that
moment is only handed out with the last page, as the sync guide requires.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.sandbox import google_errors as errors
from server.sandbox.google_events import (
    EventsService, Params, overlaps, render, start_instant,
)
from server.sandbox.google_recurrence import UTC, fmt_dt, fmt_timestamp, when_of, zone
from server.sandbox.google_store import (
    ROLE_ORDER, Calendar, PageState, Store, SyncTokenInfo, opaque_token,
)

FORBIDDEN_WITH_SYNC = ("iCalUID", "orderBy", "privateExtendedProperty", "q",
                       "sharedExtendedProperty", "timeMin", "timeMax", "updatedMin")


def _property_filters(values: list[str], name: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep:
            raise errors.bad_request(f"Invalid {name} value.", location=name)
        pairs.append((key, wanted))
    return pairs


class Listings:
    def __init__(self, store: Store, events: EventsService) -> None:
        self.store = store
        self.events = events

    # --- paging ------------------------------------------------------------------
    def _page(self, state: PageState, header: dict[str, Any], size: int) -> dict[str, Any]:
        body = dict(header)
        body["items"] = state.items[:size]
        rest = state.items[size:]
        if rest:
            body["nextPageToken"] = self.store.save_page(
                PageState(state.kind, state.calendar_id, state.user, rest,
                          state.next_sync_token, dict(state.extra)))
        elif state.next_sync_token:
            body["nextSyncToken"] = state.next_sync_token
        return body

    def _resume(self, token: str, kind: str, calendar_id: str, user: str) -> PageState:
        state = self.store.page_tokens.get(token)
        if state is None or state.kind != kind or state.user != user or (
                calendar_id and state.calendar_id != calendar_id):
            raise errors.bad_request("Invalid page token value.", location="pageToken")
        return state

    def _events_header(self, cal: Calendar, role: str, tz_name: str) -> dict[str, Any]:
        return {"kind": "calendar#events", "etag": f'"{cal.changed or 1}"',
                "summary": cal.summary, "description": cal.description,
                "updated": fmt_timestamp(cal.updated), "timeZone": tz_name,
                "accessRole": role, "defaultReminders": []}

    # --- events.list -------------------------------------------------------------
    def list_events(self, user: str, calendar_id: str, params: Params) -> dict[str, Any]:
        with self.store.lock:
            cal, role = self.events.calendar(user, calendar_id)
            size = params.integer("maxResults", 250, 1, 2500)
            tz_name = params.get("timeZone") or cal.time_zone
            out_tz = self.events._out_tz(cal, tz_name)
            sync = params.get("syncToken")
            if sync:
                for name in FORBIDDEN_WITH_SYNC:
                    if params.has(name):
                        raise errors.bad_request(
                            f"The parameter {name} cannot be used together with syncToken.",
                            location=name)
            header = self._events_header(cal, role, tz_name)
            page_token = params.get("pageToken")
            if page_token:
                return self._page(self._resume(page_token, "events", cal.id, user), header, size)
            single = params.flag("singleEvents")
            show_deleted = params.flag("showDeleted")
            max_att = (params.integer("maxAttendees", 1, 1, 10**6)
                       if params.has("maxAttendees") else None)
            if sync:
                if self.store.check_sync_token(sync, cal.id, user, "events") is None:
                    raise errors.full_sync_required()
                picked = self._changes(cal, self.store.sync_tokens[sync].stamp, single)
            else:
                picked = self._full(cal, params, single, show_deleted)
            items = [render(res, out_tz, minimal=(res.get("status") == "cancelled"
                                                  and not show_deleted),
                            max_attendees=max_att) for res in picked]
            next_sync = self.store.mint_sync_token(cal, user, self.store.counter, "events")
            state = PageState("events", cal.id, user, items, next_sync, {})
            return self._page(state, header, size)

    def _full(self, cal: Calendar, params: Params, single: bool,
              show_deleted: bool) -> list[dict[str, Any]]:
        cal_tz = zone(cal.time_zone)
        lo, hi = params.time("timeMin"), params.time("timeMax")
        if lo is not None and hi is not None and hi <= lo:
            raise errors.time_range_empty()
        updated_min = params.time("updatedMin")
        now = datetime.fromtimestamp(self.store.clock.now(), UTC)
        if updated_min is not None and (now - updated_min).total_seconds() > \
                self.store.config.updated_min_max_age:
            raise errors.updated_min_too_long_ago()
        order_by = params.get("orderBy")
        if order_by not in (None, "startTime", "updated"):
            raise errors.bad_request(f"Invalid value '{order_by}'.", location="orderBy")
        if order_by == "startTime" and not single:
            raise errors.bad_request(
                "The requested ordering is not available for the particular query.",
                location="orderBy")
        include_deleted = show_deleted or updated_min is not None
        index = self.events.exceptions_index(cal)
        picked: list[dict[str, Any]] = []
        for rec in sorted(cal.events.values(), key=lambda r: r.order):
            res = rec.resource
            master = cal.events.get(rec.master_id) if rec.master_id else None
            if master is not None:
                if single:
                    continue  # comes out of the master's expansion
                if rec.cancelled:
                    window = {"start": res["originalStartTime"], "end": res["end"]}
                    visible = include_deleted or not master.cancelled
                    if visible and overlaps(window, cal_tz, lo, hi):
                        picked.append(res)
                elif overlaps(res, cal_tz, lo, hi):
                    picked.append(res)
                continue
            if rec.cancelled and not include_deleted:
                continue
            if rec.is_recurring:
                exceptions = index.get(rec.id, [])
                if single:
                    picked.extend(self.events.expand(cal, rec, lo, hi, exceptions,
                                                     include_cancelled=include_deleted))
                elif self._series_overlaps(cal, rec, lo, hi, exceptions):
                    picked.append(res)
                continue
            if overlaps(res, cal_tz, lo, hi):
                picked.append(res)
        picked = [res for res in picked if self._matches(res, params, updated_min)]
        if order_by == "updated":
            picked.sort(key=lambda r: r.get("updated", ""))
        elif single:
            picked.sort(key=lambda r: (start_instant(r, cal_tz), r["id"]))
        return picked

    def _series_overlaps(self, cal: Calendar, rec: Any, lo: datetime | None,
                         hi: datetime | None, exceptions: list[Any]) -> bool:
        if lo is None and hi is None:
            return True
        return bool(self.events.expand(cal, rec, lo, hi, exceptions, include_cancelled=False))

    @staticmethod
    def _matches(res: dict[str, Any], params: Params, updated_min: datetime | None) -> bool:
        if updated_min is not None and \
                res.get("updated", "") < fmt_timestamp(updated_min.timestamp()):
            return False
        ical = params.get("iCalUID")
        if ical is not None and res.get("iCalUID") != ical:
            return False
        ext = res.get("extendedProperties") or {}
        for scope, name in (("private", "privateExtendedProperty"),
                            ("shared", "sharedExtendedProperty")):
            for key, wanted in _property_filters(params.getlist(name), name):
                if (ext.get(scope) or {}).get(key) != wanted:
                    return False
        types = params.getlist("eventTypes")
        if types and res.get("eventType", "default") not in types:
            return False
        query = params.get("q")
        if query:
            haystack = " ".join([res.get("summary", ""), res.get("description", ""),
                                 res.get("location", "")] +
                                [f"{a.get('email', '')} {a.get('displayName', '')}"
                                 for a in res.get("attendees") or []]).lower()
            if not all(word in haystack for word in query.lower().split()):
                return False
        return True

    def _changes(self, cal: Calendar, stamp: int, single: bool) -> list[dict[str, Any]]:
        """Everything stamped after the token, deletions included."""
        index = self.events.exceptions_index(cal)
        picked: list[dict[str, Any]] = []
        seen: set[str] = set()
        for rec in sorted(cal.events.values(), key=lambda r: r.changed):
            if rec.changed <= stamp:
                continue
            if single and rec.is_recurring and not rec.master_id:
                for inst in self.events.expand(cal, rec, None, None, index.get(rec.id, []),
                                               include_cancelled=True):
                    if inst["id"] not in seen:
                        seen.add(inst["id"])
                        picked.append(inst)
                continue
            if rec.id not in seen:
                seen.add(rec.id)
                picked.append(rec.resource)
        return picked

    # --- events.instances ----------------------------------------------------------
    def instances(self, user: str, calendar_id: str, event_id: str,
                  params: Params) -> dict[str, Any]:
        with self.store.lock:
            cal, role = self.events.calendar(user, calendar_id)
            size = params.integer("maxResults", 250, 1, 2500)
            tz_name = params.get("timeZone") or cal.time_zone
            out_tz = self.events._out_tz(cal, tz_name)
            header = self._events_header(cal, role, tz_name)
            page_token = params.get("pageToken")
            if page_token:
                return self._page(self._resume(page_token, "instances", cal.id, user),
                                  header, size)
            rec = cal.events.get(event_id)
            if rec is None:
                raise errors.not_found()
            show_deleted = params.flag("showDeleted")
            lo, hi = params.time("timeMin"), params.time("timeMax")
            if lo is not None and hi is not None and hi <= lo:
                raise errors.time_range_empty()
            found: list[dict[str, Any]] = []
            if rec.is_recurring:
                found = self.events.expand(cal, rec, lo, hi,
                                           self.events.exceptions_index(cal).get(rec.id, []),
                                           include_cancelled=show_deleted)
            original = params.time("originalStart")
            if original is not None:
                cal_tz = zone(cal.time_zone)
                found = [r for r in found
                         if when_of(r["originalStartTime"]).instant(cal_tz) == original]
            items = [render(r, out_tz) for r in found]
            return self._page(PageState("instances", cal.id, user, items, None, {}), header, size)

    # --- calendars -------------------------------------------------------------------
    def _entry(self, user: str, cal_id: str) -> dict[str, Any]:
        account = self.store.users[user]
        entry = account.entries[cal_id]
        cal = self.store.calendars[cal_id]
        out: dict[str, Any] = {
            "kind": "calendar#calendarListEntry", "etag": f'"{entry.changed}"', "id": cal.id,
            "summary": cal.summary, "timeZone": cal.time_zone, "colorId": entry.color_id,
            "backgroundColor": "#9fc6e7", "foregroundColor": "#000000",
            "selected": entry.selected, "accessRole": entry.role, "defaultReminders": [],
            "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]},
        }
        if cal.description:
            out["description"] = cal.description
        if entry.hidden:
            out["hidden"] = True
        if account.primary == cal.id:
            out["primary"] = True
        return out

    def calendar_list(self, user: str, params: Params) -> dict[str, Any]:
        with self.store.lock:
            account = self.store.users[user]
            size = params.integer("maxResults", 100, 1, 250)
            header = {"kind": "calendar#calendarList", "etag": f'"{self.store.counter}"'}
            sync = params.get("syncToken")
            if sync and params.has("minAccessRole"):
                raise errors.bad_request("The parameter minAccessRole cannot be used together "
                                         "with syncToken.", location="minAccessRole")
            page_token = params.get("pageToken")
            if page_token:
                return self._page(self._resume(page_token, "calendarList", "", user), header, size)
            min_role = params.get("minAccessRole") or "freeBusyReader"
            if min_role not in ROLE_ORDER:
                raise errors.bad_request(f"Invalid value '{min_role}'.", location="minAccessRole")
            since = None
            if sync:
                info = self.store.sync_tokens.get(sync)
                if info is None or info.kind != "calendarList" or info.user != user:
                    raise errors.full_sync_required()
                since = info.stamp
            show_hidden = params.flag("showHidden") or since is not None
            entries = sorted(account.entries.values(),
                             key=lambda e: (e.calendar_id != account.primary,
                                            self.store.calendars[e.calendar_id].summary.lower()))
            items = [self._entry(user, e.calendar_id) for e in entries
                     if ROLE_ORDER[e.role] >= ROLE_ORDER[min_role]
                     and (show_hidden or not e.hidden)
                     and (since is None or e.changed > since)]
            token = self._list_token(user)
            return self._page(PageState("calendarList", "", user, items, token, {}), header, size)

    def _list_token(self, user: str) -> str:
        token = opaque_token("CP")
        self.store.sync_tokens[token] = SyncTokenInfo("", user, self.store.counter, 0,
                                                      self.store.clock.now(), "calendarList")
        return token

    def calendar_entry(self, user: str, calendar_id: str) -> dict[str, Any]:
        with self.store.lock:
            cal, _ = self.events.calendar(user, calendar_id, min_role="freeBusyReader")
            return self._entry(user, cal.id)

    def calendar_get(self, user: str, calendar_id: str) -> dict[str, Any]:
        with self.store.lock:
            cal, _ = self.events.calendar(user, calendar_id, min_role="freeBusyReader")
            out = {"kind": "calendar#calendar", "etag": f'"{cal.changed or 1}"', "id": cal.id,
                   "summary": cal.summary, "timeZone": cal.time_zone,
                   "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]}}
            if cal.description:
                out["description"] = cal.description
            return out

    # --- freeBusy ----------------------------------------------------------------------
    def freebusy(self, user: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("Bad Request", reason="badRequest")
        params = Params({k: body[k] for k in ("timeMin", "timeMax") if body.get(k)})
        for name in ("timeMin", "timeMax"):
            if not params.has(name):
                raise errors.required(f"Missing {name} parameter.", location=name)
        lo, hi = params.time("timeMin"), params.time("timeMax")
        assert lo is not None and hi is not None
        if hi <= lo:
            raise errors.time_range_empty()
        try:
            out_tz = zone(body.get("timeZone") or "UTC")
        except ValueError:
            raise errors.bad_request("Invalid time zone.", location="timeZone") from None
        calendars: dict[str, Any] = {}
        with self.store.lock:
            for item in body.get("items") or []:
                cal_id = str((item or {}).get("id", ""))
                found = self.store.resolve(user, cal_id)
                if found is None:
                    calendars[cal_id] = {"errors": [{"domain": "global", "reason": "notFound"}],
                                         "busy": []}
                    continue
                busy = self._busy(found[0], lo, hi)
                calendars[cal_id] = {"busy": [{"start": fmt_dt(s.astimezone(out_tz)),
                                               "end": fmt_dt(e.astimezone(out_tz))}
                                              for s, e in busy]}
        return {"kind": "calendar#freeBusy", "timeMin": fmt_dt(lo.astimezone(out_tz)),
                "timeMax": fmt_dt(hi.astimezone(out_tz)), "calendars": calendars}

    def _busy(self, cal: Calendar, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
        cal_tz = zone(cal.time_zone)
        index = self.events.exceptions_index(cal)
        candidates: list[dict[str, Any]] = []
        for rec in cal.events.values():
            if rec.cancelled or (rec.master_id and rec.master_id in cal.events):
                continue
            if rec.is_recurring:
                candidates.extend(self.events.expand(cal, rec, lo, hi, index.get(rec.id, []),
                                                     include_cancelled=False))
            elif overlaps(rec.resource, cal_tz, lo, hi):
                candidates.append(rec.resource)
        spans = []
        for res in candidates:
            if res.get("transparency") == "transparent" or res.get("status") == "cancelled":
                continue
            if any(a.get("self") and a.get("responseStatus") == "declined"
                   for a in res.get("attendees") or []):
                continue
            start = max(when_of(res["start"]).instant(cal_tz), lo)
            end = min(when_of(res["end"]).instant(cal_tz), hi)
            if end > start:
                spans.append((start, end))
        merged: list[tuple[datetime, datetime]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged
