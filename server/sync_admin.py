"""Sync administration shared by the CLI and (later) the admin panel: status, sync now, calendar choice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select

from server import jobs
from server.caldav_bridge.engine import JOB_IMPORT, JOB_SYNC
from server.db import Database
from server.models import Connection, Job, RemoteCalendarRow, Tech
from server.techs import AdminError

UTC = timezone.utc


@dataclass(frozen=True)
class ConnectionStatus:
    tech: str
    provider: str
    account: str
    state: str
    last_success: datetime | None
    last_error: str
    pending_jobs: int
    calendars: list[tuple[str, str, bool, datetime | None]]  # name, local path, selected, watch expiry

    @property
    def lag_seconds(self) -> float | None:
        if self.last_success is None:
            return None
        moment = self.last_success if self.last_success.tzinfo else self.last_success.replace(tzinfo=UTC)
        return (datetime.now(UTC) - moment).total_seconds()


def sync_status(database: Database) -> list[ConnectionStatus]:
    with database.read() as session:
        pending = dict(session.execute(select(Job.kind, func.count()).where(
            Job.state.in_([jobs.READY, jobs.RUNNING])).group_by(Job.kind)).all())
        total_pending = int(sum(pending.values()))
        out = []
        for connection, tech in session.execute(select(Connection, Tech).join(Tech, Tech.id == Connection.tech_id)
                                                .order_by(Tech.username, Connection.provider)):
            calendars = [(c.name, c.local_path, c.selected, c.watch_expires) for c in session.scalars(
                select(RemoteCalendarRow).where(RemoteCalendarRow.connection_id == connection.id)
                .order_by(RemoteCalendarRow.name))]
            out.append(ConnectionStatus(tech.username, connection.provider, connection.account, connection.state,
                                        connection.last_success, connection.last_error, total_pending, calendars))
        return out


def sync_now(database: Database, username: str) -> int:
    """Queue a sync of every selected calendar of the tech; returns how many were queued."""
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise AdminError(f"no tech named {username!r}")
        rows = session.scalars(select(RemoteCalendarRow.id).join(
            Connection, Connection.id == RemoteCalendarRow.connection_id).where(
            Connection.tech_id == tech.id, RemoteCalendarRow.selected.is_(True))).all()
        if not rows:
            raise AdminError(f"{username} has no connected calendars; run: lockstep connect google|microsoft|caldav {username}")
        return sum(1 for i in rows if jobs.enqueue(session, JOB_SYNC, {"calendar": i}, dedupe_key=f"sync:{i}")
                   is not None)


def choose_calendars(database: Database, username: str, *, select_ids: list[str] | None = None,
                     primary_only: bool = False, busy: bool = False,
                     bookings_to: str | None = None) -> list[tuple[str, str, bool]]:
    """Choose which calendars sync (ids, every calendar marked busy, or primary only) and where
    bookings go; mirrors for newly chosen calendars are created by the import it queues."""
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise AdminError(f"no tech named {username!r}")
        connections = session.scalars(select(Connection).where(Connection.tech_id == tech.id)).all()
        rows = [r for c in connections for r in session.scalars(
            select(RemoteCalendarRow).where(RemoteCalendarRow.connection_id == c.id))]
        if select_ids:
            unknown = set(select_ids) - {r.remote_id for r in rows}
            if unknown:
                raise AdminError(f"unknown calendar id(s): {', '.join(sorted(unknown))}")
        if bookings_to is not None:
            target = next((r for r in rows if r.remote_id == bookings_to), None)
            if target is None:
                raise AdminError(f"unknown calendar id: {bookings_to}")
            target.selected = True
            for connection in connections:
                if connection.id == target.connection_id:
                    connection.booking_calendar = target.remote_id
        if select_ids or primary_only or busy:
            for row in rows:
                chosen = (busy and row.busy) or row.remote_id in (select_ids or [])
                row.selected = row.primary or chosen or any(
                    c.booking_calendar == row.remote_id for c in connections if c.id == row.connection_id)
            for connection in connections:
                connection.selection = "primary" if primary_only else ("busy" if busy else "chosen")
        if select_ids or primary_only or busy or bookings_to is not None:
            for connection in connections:
                jobs.enqueue(session, JOB_IMPORT, {"connection": connection.id}, dedupe_key=f"import:{connection.id}")
        return [(r.remote_id, r.name, r.selected) for r in rows]
