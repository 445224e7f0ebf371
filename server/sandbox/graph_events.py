"""Write side of the Graph emulator: create, update and delete events.

Follows the event resource reference: unknown properties are a 400
(``RequestBodyRead``), read-only ones are ignored, ``isAllDay`` needs
midnight-to-midnight times in one zone, ``transactionId`` makes a retried
create return the event it already created (reusing it for a different event
is a 400 ``ErrorDuplicateTransactionId``), ``If-Match`` must carry the current
change key (412 otherwise). Editing an occurrence makes it an exception;
deleting one removes it from the series; deleting a master removes the series.
Every change is reported to the subscriptions through ``notify``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import datetime, time, timezone
from typing import Any

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import (EventRecord, Store, Timing, new_change_key,
                                        new_item_id, occurrence_id)
from server.sandbox.graph_time import fmt_utc, parse_timing, validate_recurrence, zone
from server.sandbox.graph_view import Instance, View

Notify = Callable[[str, str, str, str], None]  # (email, calendar id, event id, changeType)

SHOW_AS = ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown")
SENSITIVITY = ("normal", "personal", "private", "confidential")
IMPORTANCE = ("low", "normal", "high")
RESPONSES = ("none", "organizer", "tentativelyAccepted", "accepted", "declined",
             "notResponded")
WRITABLE = frozenset({
    "subject", "body", "start", "end", "isAllDay", "showAs", "sensitivity", "importance",
    "categories", "location", "locations", "attendees", "isReminderOn",
    "reminderMinutesBeforeStart", "responseRequested", "allowNewTimeProposals",
    "isOnlineMeeting", "onlineMeetingProvider", "hideAttendees", "recurrence",
    "transactionId", "singleValueExtendedProperties", "originalStartTimeZone",
    "originalEndTimeZone", "organizer"})
READ_ONLY = frozenset({
    "id", "changeKey", "createdDateTime", "lastModifiedDateTime", "iCalUId", "uid", "type",
    "seriesMasterId", "originalStart", "webLink", "hasAttachments", "isOrganizer",
    "onlineMeeting", "onlineMeetingUrl", "bodyPreview", "isDraft", "isCancelled",
    "responseStatus", "cancelledOccurrences", "exceptionOccurrences"})
CONTROL_ONLY = frozenset({"isCancelled", "responseStatus"})  # settable from the control API
_DATA_FIELDS = (WRITABLE | CONTROL_ONLY) - {"start", "end", "recurrence", "transactionId",
                                            "singleValueExtendedProperties"}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def etag_matches(header: str, change_key: str) -> bool:
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == change_key:
            return True
    return False


class EventsService:
    def __init__(self, store: Store, view: View, notify: Notify) -> None:
        self.store = store
        self.view = view
        self.notify = notify

    # --- validation ----------------------------------------------------------------------
    def _check_fields(self, body: Any, control: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("Empty Payload. JSON content expected.", code="BadRequest")
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata.") or "@odata." in name:
                continue
            if name in CONTROL_ONLY and control:
                clean[name] = value
            elif name in WRITABLE:
                clean[name] = value
            elif name not in READ_ONLY:
                raise errors.bad_request(
                    f"Invalid request body: the property '{name}' does not exist on type "
                    "'microsoft.graph.event'. Make sure to only use property names that are "
                    "defined by the type or mark the type as open type.", code="RequestBodyRead")
        self._check_values(clean)
        return clean

    @staticmethod
    def _check_values(body: dict[str, Any]) -> None:
        def enum(name: str, allowed: tuple[str, ...]) -> None:
            if name in body and body[name] not in allowed:
                raise errors.bad_request(f"Requested value '{body[name]}' was not found for "
                                         f"property '{name}'.", code="RequestBodyRead")
        enum("showAs", SHOW_AS)
        enum("sensitivity", SENSITIVITY)
        enum("importance", IMPORTANCE)
        if "subject" in body and not isinstance(body["subject"], (str, type(None))):
            raise errors.bad_request("subject must be a string.", code="RequestBodyRead")
        for flag in ("isAllDay", "isReminderOn", "isCancelled", "responseRequested",
                     "isOnlineMeeting", "hideAttendees", "allowNewTimeProposals"):
            if flag in body and not isinstance(body[flag], bool):
                raise errors.bad_request(f"{flag} must be a boolean.", code="RequestBodyRead")
        if "body" in body and body["body"] is not None and (
                not isinstance(body["body"], dict)
                or str(body["body"].get("contentType", "text")).lower() not in ("text", "html")):
            raise errors.bad_request("body must be an itemBody with contentType text or html.",
                                     code="RequestBodyRead")
        if "categories" in body and not (isinstance(body["categories"], list) and all(
                isinstance(c, str) for c in body["categories"])):
            raise errors.bad_request("categories must be a list of strings.",
                                     code="RequestBodyRead")
        status = body.get("responseStatus")
        if status is not None and (not isinstance(status, dict)
                                   or status.get("response") not in RESPONSES):
            raise errors.bad_request("responseStatus.response is not a valid value.",
                                     code="RequestBodyRead")
        for name in ("transactionId",):
            if name in body and not isinstance(body[name], (str, type(None))):
                raise errors.bad_request(f"{name} must be a string.", code="RequestBodyRead")
        props = body.get("singleValueExtendedProperties")
        if props is not None and not (isinstance(props, list) and all(
                isinstance(p, dict) and isinstance(p.get("id"), str) and p["id"].strip()
                and isinstance(p.get("value"), str) for p in props)):
            raise errors.bad_request("singleValueExtendedProperties must be a list of "
                                     "{id, value} strings.", code="RequestBodyRead")

    @staticmethod
    def _check_times(start: Timing, end: Timing, all_day: bool) -> None:
        if end.instant < start.instant:
            raise errors.bad_request("The end time of the event is before its start time.",
                                     code="ErrorInvalidRequest")
        if all_day:
            if start.wall.time() != time(0) or end.wall.time() != time(0) or \
                    zone(start.zone) != zone(end.zone) or end.wall <= start.wall:
                raise errors.bad_request(
                    "If the 'IsAllDay' property is set to true, the start and end times must "
                    "be midnight and in the same time zone, and the event must last at least "
                    "one day.", code="ErrorInvalidRequest")

    # --- create ---------------------------------------------------------------------------
    def create(self, email: str, calendar_id: str | None, body: Any, *,
               control: bool = False) -> tuple[dict[str, Any], bool]:
        """Insert an event; returns the resource and whether it was newly created."""
        with self.store.lock:
            user = self.store.user(email)
            cal = self.store.calendar_of(email, calendar_id or user.default_calendar)
            if cal is None:
                raise errors.not_found()
            if not cal.can_edit:
                raise errors.access_denied()
            fields = self._check_fields(body, control)
            txn = fields.get("transactionId")
            digest = _digest(body)
            if txn:
                existing_id = self.store.transactions.get((user.email.lower(), txn))
                existing = self.store.find_event(email, existing_id) if existing_id else None
                if existing is not None:
                    if existing.request_digest == digest:
                        return self.view.render_record(existing, "UTC"), False
                    raise errors.bad_request(
                        "Your request can't be completed. The TransactionId specified in the "
                        "request has already been used to create a different event.",
                        code="ErrorDuplicateTransactionId")
            if "start" not in fields or "end" not in fields:
                raise errors.bad_request("An event needs both start and end.",
                                         code="ErrorInvalidRequest")
            start = parse_timing(fields["start"], "start")
            end = parse_timing(fields["end"], "end")
            self._check_times(start, end, bool(fields.get("isAllDay")))
            recurrence = (validate_recurrence(fields["recurrence"])
                          if fields.get("recurrence") else None)
            now = self.store.clock.now()
            rec = EventRecord(
                id=new_item_id(), calendar_id=cal.id, owner=user.email.lower(),
                data={k: v for k, v in fields.items() if k in _DATA_FIELDS},
                start=start, end=end, recurrence=recurrence,
                ical_uid="040000008200E00074C5B7101A82E00800000000"
                         + secrets.token_hex(24).upper(),
                created=now, modified=now, change_key=new_change_key(),
                stamp=self.store.tick(), series_key=new_change_key(),
                transaction_id=txn or None, request_digest=digest)
            self._set_props(rec, fields.get("singleValueExtendedProperties"))
            cal.events[rec.id] = rec
            if txn:
                self.store.transactions[(user.email.lower(), txn)] = rec.id
            resource = self.view.render_record(rec, "UTC")
        self.notify(user.email, cal.id, rec.id, "created")
        return resource, True

    @staticmethod
    def _set_props(rec: EventRecord, props: list[dict[str, str]] | None) -> None:
        for prop in props or []:
            rec.ext[prop["id"].lower()] = {"id": prop["id"], "value": prop["value"]}

    # --- update ------------------------------------------------------------------------------
    def update(self, email: str, event_id: str, body: Any, *, if_match: str | None = None,
               control: bool = False) -> dict[str, Any]:
        with self.store.lock:
            fields = self._check_fields(body, control)
            target, key = self.view.locate(email, event_id)
            if key is not None and key in target.exceptions:
                rec: EventRecord = target.exceptions[key]
                master: EventRecord | None = target
            elif key is not None:
                rec, master = self._new_exception(target, key), target
            else:
                rec = target
                master = None
            current_key = (rec.change_key if key is None or key in target.exceptions
                           else Instance(event_id, target, None, rec.start, rec.end,
                                         key).change_key)
            if if_match and not etag_matches(if_match, current_key):
                raise errors.conflict_changekey()
            if "transactionId" in fields and fields["transactionId"] != rec.transaction_id:
                raise errors.bad_request("The transactionId of an event cannot be changed.",
                                         code="ErrorInvalidRequest")
            if master is not None and fields.get("recurrence"):
                raise errors.bad_request("An occurrence or exception cannot have a recurrence.",
                                         code="ErrorInvalidRequest")
            start = parse_timing(fields["start"], "start") if "start" in fields else rec.start
            end = parse_timing(fields["end"], "end") if "end" in fields else rec.end
            all_day = bool(fields.get("isAllDay", rec.data.get("isAllDay", False)))
            self._check_times(start, end, all_day)
            series_changed = False
            if master is None and "recurrence" in fields:
                new_rec = (validate_recurrence(fields["recurrence"])
                           if fields["recurrence"] else None)
                series_changed = new_rec != rec.recurrence
                rec.recurrence = new_rec
            if master is None and rec.recurrence is not None and (
                    start.instant != rec.start.instant or end.instant != rec.end.instant):
                series_changed = True
            rec.start, rec.end = start, end
            for name, value in fields.items():
                if name in _DATA_FIELDS:
                    if value is None:
                        rec.data.pop(name, None)
                    else:
                        rec.data[name] = value
            self._set_props(rec, fields.get("singleValueExtendedProperties"))
            rec.modified = self.store.clock.now()
            rec.change_key = new_change_key()
            rec.stamp = self.store.tick()
            if master is None and (series_changed or fields.keys() - {
                    "singleValueExtendedProperties"}):
                rec.series_key = new_change_key()
            if series_changed:
                # Exchange drops the exceptions of a series whose pattern or times change.
                rec.exceptions.clear()
                rec.cancelled.clear()
            if master is not None:
                master.exceptions[key or ""] = rec
                master.modified = rec.modified
                master.change_key = new_change_key()
                master.stamp = rec.stamp
            resource = self.view.render_record(rec, "UTC")
            owner, cal_id = rec.owner, rec.calendar_id
            notify_id = master.id if master is not None else rec.id
        self.notify(owner, cal_id, notify_id, "updated")
        return resource

    def _new_exception(self, master: EventRecord, key: str) -> EventRecord:
        inst = self.view.instance(master, key)
        now = self.store.clock.now()
        return EventRecord(
            id=occurrence_id(master.id, key), calendar_id=master.calendar_id,
            owner=master.owner, data=dict(master.data), start=inst.start, end=inst.end,
            recurrence=None, ical_uid=master.ical_uid, created=now, modified=now,
            change_key=new_change_key(), stamp=self.store.tick(),
            ext={k: dict(v) for k, v in master.ext.items()}, master_id=master.id,
            original_key=key)

    # --- delete --------------------------------------------------------------------------------
    def delete(self, email: str, event_id: str, *, if_match: str | None = None) -> None:
        with self.store.lock:
            target, key = self.view.locate(email, event_id)
            if if_match:
                current = (target.exceptions[key].change_key if key in target.exceptions
                           else self.view.instance(target, key).change_key) \
                    if key is not None else target.change_key
                if not etag_matches(if_match, current):
                    raise errors.conflict_changekey()
            if key is None:
                target.deleted = True
                target.stamp = self.store.tick()
                change = "deleted"
            else:
                target.exceptions.pop(key, None)
                target.cancelled.add(key)
                target.modified = self.store.clock.now()
                target.change_key = new_change_key()
                target.stamp = self.store.tick()
                change = "updated"
            owner, cal_id, target_id = target.owner, target.calendar_id, target.id
        self.notify(owner, cal_id, target_id, change)

    # --- responses ------------------------------------------------------------------------
    def respond(self, email: str, event_id: str, response: str) -> None:
        """accept / tentativelyAccept / decline: the owner's responseStatus."""
        stamp = datetime.fromtimestamp(self.store.clock.now(), timezone.utc)
        self.update(email, event_id, {"responseStatus": {
            "response": response, "time": fmt_utc(stamp)}}, control=True)
