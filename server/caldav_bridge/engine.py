"""The sync engine: local store ↔ provider reconciliation, as job handlers.

Reaches providers only through server.providers (base interface + registry).
Provider calls never run inside a database transaction: each handler reads
what it needs, talks to the provider, then writes the outcome under the
tech's lock, re-checking that nothing moved meanwhile.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import icalendar
from sqlalchemy import delete, select

from server import jobs
from server.caldav_bridge import mirror
from server.caldav_bridge.conflicts import record_conflicts
from server.caldav_bridge.outbox import dispatch_changes
from server.config import Config
from server.crypto import KeyRing
from server.dav import store
from server.dav.rights import BOOKINGS_CALENDAR
from server.db import Database
from server.models import Connection, DavChange, DavCollection, EventLink, Job, RemoteCalendarRow, Tech, utcnow
from server.notify import notify
from server.providers import provider_class
from server.providers.base import AuthorizationLost, Credentials, CursorExpired, Provider, RemoteEvent

log = logging.getLogger("lockstep.sync")
UTC = timezone.utc

JOB_IMPORT = "initial_import"
JOB_SYNC = "sync_calendar"
JOB_PUSH = "push_item"
JOB_WATCH = "renew_watch"


@dataclass
class Bridge:
    database: Database
    config: Config
    ring: KeyRing

    # -- providers ---------------------------------------------------------------
    def open_provider(self, connection: Connection) -> Provider:
        cls = provider_class(connection.provider)
        blob = self.ring.decrypt(connection.credentials)
        return cls(cls.settings_from(self.config), Credentials(blob))

    def _save_credentials(self, connection_id: int, provider: Provider, tech: str) -> None:
        credentials = provider.credentials()
        if not credentials.changed:
            return
        with self.database.write([tech]) as session:
            row = session.get(Connection, connection_id)
            if row is not None:
                row.credentials = self.ring.encrypt(credentials.blob)

    def handlers(self) -> dict[str, Any]:
        return {JOB_IMPORT: self.initial_import, JOB_SYNC: self.sync_calendar, JOB_PUSH: self.push_item,
                JOB_WATCH: self.renew_watch}

    # -- import -------------------------------------------------------------------
    def initial_import(self, payload: dict[str, Any]) -> None:
        """Discover calendars, create mirrors for the selected ones, queue their first sync."""
        connection, tech = self._connection(payload["connection"])
        provider = self.open_provider(connection)
        calendars = provider.list_calendars()
        with self.database.write([tech]) as session:
            row = session.get(Connection, connection.id)
            assert row is not None
            taken = {c.path.split("/", 1)[1] for c in store.child_collections(session, tech)}
            primary = next((c for c in calendars if c.primary), None)
            if primary is not None and not row.account:
                row.account = primary.remote_id
            for calendar in calendars:
                record = session.scalar(select(RemoteCalendarRow).where(
                    RemoteCalendarRow.connection_id == row.id, RemoteCalendarRow.remote_id == calendar.remote_id))
                if record is None:  # new calendars follow the connection's selection rule; known ones keep theirs
                    record = RemoteCalendarRow(connection_id=row.id, remote_id=calendar.remote_id,
                                               selected=calendar.primary or (row.selection == "busy" and calendar.busy))
                    session.add(record)
                    session.flush()
                    # SQLite hands a removed calendar's id to the next new one: jobs still waiting under
                    # that id (a renewal due in days) belong to the removed calendar and would absorb ours.
                    session.execute(delete(Job).where(Job.state == jobs.READY, Job.dedupe_key.in_(
                        [f"sync:{record.id}", f"watch:{record.id}"])))
                record.name, record.primary, record.busy = calendar.name, calendar.primary, calendar.busy
                if record.selected and not record.local_path:
                    slug = mirror.mirror_slug(row.provider, calendar.name, calendar.primary, taken)
                    taken.add(slug)
                    record.local_path = f"{tech}/{slug}"
                    store.ensure_collection(session, record.local_path, {
                        "tag": "VCALENDAR", "D:displayname": f"{calendar.name} ({row.provider.capitalize()})",
                        "C:supported-calendar-component-set": "VEVENT"})
                session.flush()
                if record.selected:
                    jobs.enqueue(session, JOB_SYNC, {"calendar": record.id}, dedupe_key=f"sync:{record.id}")
                    jobs.enqueue(session, JOB_WATCH, {"calendar": record.id}, dedupe_key=f"watch:{record.id}")
                    self._queue_unsent_edits(session, record)
            # Bookings made before the connection go out now; so do cancellations whose push gave up.
            bookings = store.get_collection(session, f"{tech}/{BOOKINGS_CALENDAR}")
            hrefs = store.all_hrefs(session, bookings.id) if bookings else []
            gone = set(session.scalars(select(EventLink.local_href).where(
                EventLink.local_path == f"{tech}/{BOOKINGS_CALENDAR}"))) - set(hrefs)
            for href in [*hrefs, *sorted(gone)]:
                jobs.enqueue(session, JOB_PUSH, {"path": f"{tech}/{BOOKINGS_CALENDAR}", "href": href},
                             dedupe_key=f"push:{tech}/{BOOKINGS_CALENDAR}/{href}")
        self._save_credentials(connection.id, provider, tech)
        log.info("import %s/%s: %d calendar(s) found", tech, connection.provider, len(calendars))

    def _queue_unsent_edits(self, session: Any, record: RemoteCalendarRow) -> None:
        """Calendar-app edits of a mirror whose push gave up (e.g. while the grant was revoked)
        go out now: items not linked or changed since their link, and links whose item is gone."""
        local = store.get_collection(session, record.local_path) if record.local_path else None
        if local is None:
            return
        links = {link.local_href: link for link in session.scalars(select(EventLink).where(
            EventLink.remote_calendar_id == record.id, EventLink.local_path == local.path))}
        current = {item.href: item.etag for item in store.get_items(session, local.id)}
        unsent = [href for href, etag in current.items() if not mirror.local_is_current(links.get(href), etag)]
        unsent += [href for href in links if href not in current]
        for href in sorted(unsent):
            jobs.enqueue(session, JOB_PUSH, {"path": local.path, "href": href}, dedupe_key=f"push:{local.path}/{href}")

    # -- inbound ------------------------------------------------------------------
    def sync_calendar(self, payload: dict[str, Any]) -> None:
        calendar, connection, tech = self._calendar(payload["calendar"])
        provider = self.open_provider(connection)
        cursor = calendar.cursor or None
        counts = {"created": 0, "updated": 0, "deleted": 0, "echo": 0, "reverted": 0}
        listed_from = utcnow()
        try:
            seen = self._apply_pages(provider, calendar, connection, tech, cursor, counts)
        except CursorExpired:
            log.info("sync %s: cursor expired, listing everything again", calendar.local_path)
            seen = self._apply_pages(provider, calendar, connection, tech, None, counts)
        if seen is not None:
            self._drop_unseen(calendar.id, tech, seen, counts, listed_from)
        self._mark_success(connection.id, tech)
        self._save_credentials(connection.id, provider, tech)
        log.info("sync %s: %s", calendar.local_path or calendar.remote_id,
                 ", ".join(f"{v} {k}" for k, v in counts.items()))

    def _apply_pages(self, provider: Provider, calendar: RemoteCalendarRow, connection: Connection, tech: str,
                     cursor: str | None, counts: dict[str, int]) -> set[str] | None:
        seen: set[str] | None = set() if cursor is None else None
        for number, page in enumerate(provider.list_changes(calendar.remote_id, cursor), start=1):
            if cursor is None:
                log.info("import %s: page %d, %d event(s) so far", calendar.local_path,
                         number, len(seen or ()) + len(page.events))
            with self.database.write([tech]) as session:
                for event in page.events:
                    if seen is not None:
                        seen.add(event.remote_id)
                    self._apply_one(session, calendar.id, connection.id, tech, event, counts)
                if page.cursor is not None:
                    row = session.get(RemoteCalendarRow, calendar.id)
                    if row is not None:
                        row.cursor = page.cursor
        return seen

    def _apply_one(self, session: Any, calendar_id: int, connection_id: int, tech: str,
                   event: RemoteEvent, counts: dict[str, int]) -> None:
        calendar = session.get(RemoteCalendarRow, calendar_id)
        link = session.scalar(select(EventLink).where(
            EventLink.remote_calendar_id == calendar_id, EventLink.remote_id == event.remote_id))
        if link is None and event.lockstep_uid:
            link = (self._adopt_booking(session, calendar, event) or self._adopt_pushed(session, calendar, event)
                    or self._adopt_cancelled_booking(session, calendar, tech, event))
        if link is not None and link.origin == mirror.ORIGIN_LOCAL:
            if event.deleted and _cancelled_locally(session, link):
                counts["echo"] += 1  # a cancelled booking pushed: Google lists it as deleted
            elif event.deleted or not mirror.is_echo(link, event.etag):
                self._revert_booking(session, tech, link, event)
                counts["reverted"] += 1
            else:
                counts["echo"] += 1
            return
        if event.deleted:
            if link is not None:
                local = store.get_collection(session, link.local_path)
                if local is not None:
                    store.delete_item(session, local, link.local_href)
                session.delete(link)
                counts["deleted"] += 1
            return
        if mirror.is_echo(link, event.etag) or not calendar.local_path or event.ical is None:
            counts["echo"] += 1
            return
        local = store.ensure_collection(session, calendar.local_path)
        href = link.local_href if link else mirror.mirror_href(event.remote_id)
        data = store.item_data_from_text(event.ical, local.path)
        store.put_item(session, local, href, data)
        if link is None:
            link = EventLink(remote_calendar_id=calendar_id, remote_id=event.remote_id, local_path=local.path,
                             local_href=href, local_uid=data.uid, origin=mirror.ORIGIN_REMOTE)
            session.add(link)
            counts["created"] += 1
        else:
            counts["updated"] += 1
        link.remote_etag, link.local_etag, link.updated_at = event.etag, data.etag, utcnow()
        session.flush()
        record_conflicts(session, tech, local, href)

    def _adopt_booking(self, session: Any, calendar: RemoteCalendarRow, event: RemoteEvent) -> EventLink | None:
        """Our booking seen without a link (e.g. after a full resync): link it, don't duplicate it."""
        tech = calendar.local_path.split("/", 1)[0] if calendar.local_path else None
        for item in store.items_by_uid(session, event.lockstep_uid or ""):
            collection = session.get(DavCollection, item.collection_id)
            if collection is not None and collection.path.endswith("/" + BOOKINGS_CALENDAR) and \
                    (tech is None or collection.path.startswith(tech + "/")):
                link = EventLink(remote_calendar_id=calendar.id, remote_id=event.remote_id,
                                 remote_etag=event.etag, local_path=collection.path, local_href=item.href,
                                 local_uid=item.uid, local_etag=item.etag, origin=mirror.ORIGIN_LOCAL)
                session.add(link)
                session.flush()
                return link
        return None

    def _adopt_pushed(self, session: Any, calendar: RemoteCalendarRow, event: RemoteEvent) -> EventLink | None:
        """A calendar-app event of this mirror that we pushed, listed before the push recorded its
        link: link the item it came from (then updated like any mirrored event), don't copy it."""
        local = store.get_collection(session, calendar.local_path) if calendar.local_path else None
        for item in store.items_by_uid(session, event.lockstep_uid or "") if local is not None else []:
            if item.collection_id == local.id:
                link = EventLink(remote_calendar_id=calendar.id, remote_id=event.remote_id, remote_etag="",
                                 local_path=local.path, local_href=item.href, local_uid=item.uid,
                                 local_etag=item.etag, origin=mirror.ORIGIN_REMOTE)
                session.add(link)
                session.flush()
                return link
        return None

    def _adopt_cancelled_booking(self, session: Any, calendar: RemoteCalendarRow, tech: str,
                                 event: RemoteEvent) -> EventLink | None:
        """Our booking, cancelled before its creation's push had linked it: link it to the booking's
        old place so that its deletion goes out (a copy in the mirror would outlive the booking)."""
        path = f"{tech}/{BOOKINGS_CALENDAR}"
        href = session.scalar(select(DavChange.href).where(
            DavChange.collection_path == path, DavChange.uid == event.lockstep_uid)
            .order_by(DavChange.id.desc()).limit(1))
        if href is None:
            return None
        link = EventLink(remote_calendar_id=calendar.id, remote_id=event.remote_id, remote_etag=event.etag,
                         local_path=path, local_href=href, local_uid=event.lockstep_uid or "",
                         origin=mirror.ORIGIN_LOCAL)
        session.add(link)
        session.flush()
        jobs.enqueue(session, JOB_PUSH, {"path": path, "href": href}, dedupe_key=f"push:{path}/{href}")
        return link

    def _revert_booking(self, session: Any, tech: str, link: EventLink, event: RemoteEvent) -> None:
        """The booking is the truth: push our version back and tell the tech and dispatcher."""
        what = "deleted" if event.deleted else "changed"
        link.remote_etag = "" if event.deleted else event.etag
        link.local_etag = ""  # force the push; a deleted event is re-created under its deterministic id
        jobs.enqueue(session, JOB_PUSH, {"path": link.local_path, "href": link.local_href},
                     dedupe_key=f"push:{link.local_path}/{link.local_href}")
        message = f"Booking {link.local_uid} was {what} in the tech's calendar; Lockstep restored it."
        notify(session, tech, "booking_reverted", message)

    def _drop_unseen(self, calendar_id: int, tech: str, seen: set[str], counts: dict[str, int],
                     listed_from: datetime) -> None:
        """After a full listing, mirrored events that were not listed are gone remotely; so are
        bookings that were not listed (deleted while the cursor was lost): those are restored,
        unless pushed while the listing ran."""
        with self.database.write([tech]) as session:
            ours = session.scalars(select(EventLink).where(
                EventLink.remote_calendar_id == calendar_id, EventLink.origin == mirror.ORIGIN_LOCAL,
                EventLink.updated_at < listed_from)).all()
            for link in ours:
                if link.remote_id not in seen and not _cancelled_locally(session, link):
                    self._revert_booking(session, tech, link, RemoteEvent(link.remote_id))
                    counts["reverted"] += 1
            links = session.scalars(select(EventLink).where(
                EventLink.remote_calendar_id == calendar_id, EventLink.origin == mirror.ORIGIN_REMOTE)).all()
            for link in links:
                if link.remote_id not in seen:
                    local = store.get_collection(session, link.local_path)
                    if local is not None:
                        store.delete_item(session, local, link.local_href)
                    session.delete(link)
                    counts["deleted"] += 1

    # -- outbound -----------------------------------------------------------------
    def push_item(self, payload: dict[str, Any]) -> None:
        """Send one local item (a booking, or an edit in a mirror calendar) to the provider."""
        path, href = payload["path"], payload["href"]
        tech = path.split("/", 1)[0]
        target = self._push_target(path, tech)
        if target is None:
            return
        calendar, connection = target
        with self.database.read() as session:
            collection = store.get_collection(session, path)
            items = store.get_items(session, collection.id, [href]) if collection else []
            item = items[0] if items else None
            link = session.scalar(select(EventLink).where(
                EventLink.remote_calendar_id == calendar.id, EventLink.local_path == path,
                EventLink.local_href == href))
        if item is not None and mirror.local_is_current(link, item.etag):
            return  # our own inbound write, or already pushed
        provider = self.open_provider(connection)
        try:
            if item is None:
                if link is not None:
                    provider.delete_event(calendar.remote_id, link.remote_id)
                    with self.database.write([tech]) as session:
                        stale = session.get(EventLink, link.id)
                        if stale is not None:
                            session.delete(stale)
                return
            origin = mirror.ORIGIN_LOCAL if path.endswith("/" + BOOKINGS_CALENDAR) else mirror.ORIGIN_REMOTE
            remote = provider.put_event(calendar.remote_id, item.uid, item.text,
                                        remote_id=link.remote_id if link else None,
                                        etag=(link.remote_etag or None) if link else None)
        finally:
            self._save_credentials(connection.id, provider, tech)
        with self.database.write([tech]) as session:
            current = session.scalar(select(EventLink).where(
                EventLink.remote_calendar_id == calendar.id, EventLink.remote_id == remote.remote_id))
            if current is None and link is not None:
                # Re-created under a new id (Graph cannot re-use a deleted event's): the same link,
                # re-pointed, or a second one would outlive the item and keep the new event alive.
                current = session.get(EventLink, link.id)
                if current is not None:
                    current.remote_id = remote.remote_id
            if current is None:
                current = EventLink(remote_calendar_id=calendar.id, remote_id=remote.remote_id, local_path=path,
                                    local_href=href, local_uid=item.uid, origin=origin)
                session.add(current)
            current.remote_etag, current.local_etag, current.updated_at = remote.etag, item.etag, utcnow()
            local = store.get_collection(session, path)
            stored = store.get_items(session, local.id, [href]) if local is not None else []
            if not stored or stored[0].etag != item.etag:
                # Changed or removed while we pushed (another push of it may have finished first):
                # what went out is stale, so push the item's present state after it.
                jobs.enqueue(session, JOB_PUSH, {"path": path, "href": href}, dedupe_key=f"push:{path}/{href}")
            elif origin == mirror.ORIGIN_REMOTE and local is not None:
                # A calendar-app write to a mirror blocks time like a provider-side one: same conflicts.
                session.flush()
                record_conflicts(session, tech, local, href)
        self._mark_success(connection.id, tech)

    def _push_target(self, path: str, tech: str) -> tuple[RemoteCalendarRow, Connection] | None:
        with self.database.read() as session:
            if path.endswith("/" + BOOKINGS_CALENDAR):
                rows = session.execute(
                    select(RemoteCalendarRow, Connection).join(Connection, Connection.id == RemoteCalendarRow.connection_id)
                    .join(Tech, Tech.id == Connection.tech_id)
                    .where(Tech.username == tech, RemoteCalendarRow.selected.is_(True))).all()
                # One target only, even with several accounts: the calendar chosen with --bookings-to
                # on any of them, else the primary calendar of the first account connected.
                chosen = [(c, k) for c, k in rows if k.booking_calendar and c.remote_id == k.booking_calendar]
                primaries = sorted(((c, k) for c, k in rows if not k.booking_calendar and c.primary),
                                   key=lambda pair: pair[1].id)
                found = chosen or primaries
                return found[0] if found else None
            row = session.execute(
                select(RemoteCalendarRow, Connection).join(Connection, Connection.id == RemoteCalendarRow.connection_id)
                .where(RemoteCalendarRow.local_path == path)).first()
            return (row[0], row[1]) if row else None

    # -- push channels ------------------------------------------------------------------
    def renew_watch(self, payload: dict[str, Any]) -> None:
        if not self.config.get("sync", "push"):
            return
        calendar, connection, tech = self._calendar(payload["calendar"])
        ttl = int(self.config.get("sync", "watch_ttl_seconds"))
        provider = self.open_provider(connection)
        address = f"{self.config.public_url}/hooks/{connection.provider}"
        watch = provider.start_watch(calendar.remote_id, address, secrets.token_urlsafe(24), ttl)
        old = None
        with self.database.write([tech]) as session:
            row = session.get(RemoteCalendarRow, calendar.id)
            if row is None:
                return
            if row.watch_channel:
                old = (row.watch_channel, row.watch_resource, row.watch_token, row.watch_expires)
            if watch is not None:
                row.watch_channel, row.watch_resource = watch.channel_id, watch.resource_id
                row.watch_token, row.watch_expires = watch.token, watch.expires_at
                renew_in = max(timedelta(seconds=10), (watch.expires_at - datetime.now(UTC)) / 2)
                jobs.enqueue(session, JOB_WATCH, {"calendar": row.id}, dedupe_key=f"watch:{row.id}", delay=renew_in)
                # The provider notifies from the moment it opened the channel, but the hook accepts
                # only what this commit records: a change in between was refused, so catch up now.
                jobs.enqueue(session, JOB_SYNC, {"calendar": row.id}, dedupe_key=f"sync:{row.id}")
        if old is not None:
            from server.providers.base import Watch

            try:
                provider.stop_watch(Watch(old[0], old[1], old[3] or datetime.now(UTC), old[2]))
            except Exception as exc:  # noqa: BLE001 - an orphaned channel only costs a stray notification
                log.warning("could not stop old channel of %s: %s", calendar.local_path, exc)

    def disconnect(self, username: str, provider_name: str) -> int:
        """Stop push channels, revoke the grant, forget the connection, remove its mirror calendars;
        returns mirrors removed."""
        with self.database.read() as session:
            connection = session.scalar(select(Connection).join(Tech, Tech.id == Connection.tech_id).where(
                Tech.username == username, Connection.provider == provider_name))
            calendars = list(session.scalars(select(RemoteCalendarRow).where(
                RemoteCalendarRow.connection_id == connection.id))) if connection else []
        if connection is None:
            raise LookupError(f"{username} has no {provider_name} connection")
        self._withdraw(connection, calendars, f"{username}/{provider_name}")
        with self.database.write([username]) as session:
            removed = 0
            for calendar in calendars:
                if calendar.local_path and store.get_collection(session, calendar.local_path) is not None:
                    store.delete_collection_tree(session, calendar.local_path)
                    removed += 1
            row = session.get(Connection, connection.id)
            if row is not None:
                session.delete(row)
        log.info("disconnected %s from %s: %d mirror calendar(s) removed", username, provider_name, removed)
        return removed

    def _withdraw(self, connection: Connection, calendars: list[RemoteCalendarRow], label: str) -> None:
        """Stop push channels and revoke the grant; failures only cost stray notifications
        (channels expire) and are logged, since the credential is deleted anyway."""
        from server.providers.base import Watch

        try:
            provider = self.open_provider(connection)
        except Exception as exc:  # noqa: BLE001 - an unreadable credential has nothing to withdraw
            log.warning("disconnect %s: cannot open the provider: %s", label, exc)
            return
        for calendar in calendars:
            if not calendar.watch_channel:
                continue
            try:
                provider.stop_watch(Watch(calendar.watch_channel, calendar.watch_resource,
                                          calendar.watch_expires or datetime.now(UTC), calendar.watch_token))
            except Exception as exc:  # noqa: BLE001 - revoked grants cannot stop channels
                log.warning("disconnect %s: could not stop a push channel: %s", label, exc)
        try:
            provider.revoke()
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("disconnect %s: could not revoke the grant: %s", label, exc)

    # -- shared -------------------------------------------------------------------
    def _connection(self, connection_id: int) -> tuple[Connection, str]:
        with self.database.read() as session:
            connection = session.get(Connection, connection_id)
            tech = session.get(Tech, connection.tech_id) if connection else None
        if connection is None or tech is None:
            raise LookupError(f"connection {connection_id} is gone")
        return connection, tech.username

    def _calendar(self, calendar_id: int) -> tuple[RemoteCalendarRow, Connection, str]:
        with self.database.read() as session:
            calendar = session.get(RemoteCalendarRow, calendar_id)
        if calendar is None:
            raise LookupError(f"remote calendar {calendar_id} is gone")
        connection, tech = self._connection(calendar.connection_id)
        return calendar, connection, tech

    def _mark_success(self, connection_id: int, tech: str) -> None:
        with self.database.write([tech]) as session:
            row = session.get(Connection, connection_id)
            if row is None:
                return
            if row.trouble_since is not None:
                added = session.scalars(select(DavChange.uid).where(
                    DavChange.collection_path == f"{tech}/{BOOKINGS_CALENDAR}", DavChange.operation == "put",
                    DavChange.created_at >= row.trouble_since).distinct()).all()
                listing = ", ".join(sorted(added)) or "none"
                notify(session, tech, "sync_recovered",
                       f"{row.provider.capitalize()} sync works again (trouble since "
                       f"{row.trouble_since:%Y-%m-%d %H:%M} UTC). Bookings added meanwhile: {listing}.")
            row.state, row.last_success, row.last_error, row.trouble_since = "ok", utcnow(), "", None

    def mark_trouble(self, payload: dict[str, Any], error: Exception) -> None:
        """Called by the worker when a job fails: degraded, or needs_reauth when the grant is gone."""
        connection_id = self._connection_of(payload)
        if connection_id is None:
            return
        with self.database.read() as session:
            connection = session.get(Connection, connection_id)
            tech = session.get(Tech, connection.tech_id) if connection else None
        if connection is None or tech is None:
            return
        with self.database.write([tech.username]) as session:
            row = session.get(Connection, connection_id)
            assert row is not None
            reauth = isinstance(error, AuthorizationLost)
            if reauth and row.state != "needs_reauth":
                notify(session, tech.username, "needs_reauth",
                       f"{row.provider.capitalize()} access was revoked or expired; reconnect to resume sync. "
                       "Bookings are still accepted and will be sent once reconnected.", dispatcher=True)
            row.state = "needs_reauth" if reauth else "degraded"
            row.last_error = str(error)[:500]
            row.trouble_since = row.trouble_since or utcnow()

    def _connection_of(self, payload: dict[str, Any]) -> int | None:
        if "connection" in payload:
            return int(payload["connection"])
        if "path" in payload:
            target = self._push_target(payload["path"], payload["path"].split("/", 1)[0])
            return target[1].id if target else None
        if "calendar" in payload:
            with self.database.read() as session:
                row = session.get(RemoteCalendarRow, payload["calendar"])
                return row.connection_id if row else None
        return None

    def dispatch(self) -> int:
        return dispatch_changes(self.database, JOB_PUSH)

    def poll_intervals(self) -> dict[str | None, int]:
        """Seconds between polls: providers without push (remote CalDAV) at their own pace,
        every other provider (key None) at the safety-net interval."""
        return {"caldav": int(self.config.get("caldav", "poll_seconds")),
                None: int(self.config.get("sync", "poll_seconds"))}

    def schedule_polls(self, provider: str | None = None, others_than: Collection[str] = ()) -> int:
        """The safety net: every selected calendar is synced at least every poll interval.
        ``provider`` limits it to that provider's connections; ``others_than`` leaves those out."""
        with self.database.write(["poll"]) as session:
            query = select(RemoteCalendarRow.id).join(
                Connection, Connection.id == RemoteCalendarRow.connection_id).where(
                RemoteCalendarRow.selected.is_(True), Connection.state != "needs_reauth")
            if provider is not None:
                query = query.where(Connection.provider == provider)
            if others_than:
                query = query.where(Connection.provider.not_in(list(others_than)))
            ids = session.scalars(query).all()
            return sum(1 for i in ids if jobs.enqueue(session, JOB_SYNC, {"calendar": i}, dedupe_key=f"sync:{i}"))


def _cancelled_locally(session: Any, link: EventLink) -> bool:
    """Is the linked booking itself cancelled (every master VEVENT STATUS:CANCELLED)? Then a
    remote deletion agrees with it: Google keeps no cancelled event in its listing and reports
    our push of one as deleted, and restoring it would push, revert and notify forever."""
    collection = store.get_collection(session, link.local_path)
    items = store.get_items(session, collection.id, [link.local_href]) if collection is not None else []
    if not items:
        return False
    try:
        masters = [c for c in icalendar.Calendar.from_ical(items[0].text).walk("VEVENT") if "RECURRENCE-ID" not in c]
    except ValueError:
        return False
    return bool(masters) and all(str(c.get("STATUS", "")).upper() == "CANCELLED" for c in masters)
