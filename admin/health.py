"""Dashboard rows: every tech and each of their connections, with what a dispatcher needs to see."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import or_, select

from server import jobs
from server.caldav_bridge.engine import JOB_WATCH
from server.db import Database
from server.models import Connection, Job, RemoteCalendarRow, Tech

UTC = timezone.utc
NOT_CONNECTED = "not_connected"
TROUBLE = ("degraded", "needs_reauth")


@dataclass(frozen=True)
class HealthRow:
    tech: str
    tech_name: str
    provider: str  # "" when the tech has no connection
    account: str
    state: str  # ok | degraded | needs_reauth | not_connected
    last_success: datetime | None
    last_error: str
    pending_jobs: int
    dead_jobs: int
    calendars_synced: int
    watch_expires: datetime | None  # earliest push channel/subscription expiry of its calendars
    polling_only: bool

    @property
    def lag_seconds(self) -> float | None:
        if self.last_success is None:
            return None
        return (datetime.now(UTC) - _aware(self.last_success)).total_seconds()

    @property
    def troubled(self) -> bool:
        return self.state in TROUBLE


def dashboard(database: Database) -> list[HealthRow]:
    now = datetime.now(UTC)
    with database.read() as session:
        techs = list(session.scalars(select(Tech).order_by(Tech.username)))
        connections = list(session.scalars(select(Connection).order_by(Connection.provider)))
        calendars = list(session.scalars(select(RemoteCalendarRow)))
        # Waiting work: due (or retrying) jobs; a renewal planned for next week is not "pending".
        waiting = session.execute(select(Job.dedupe_key, Job.kind, Job.state).where(
            or_(Job.state == jobs.DEAD,
                Job.state == jobs.RUNNING,
                (Job.state == jobs.READY) & (or_(Job.run_at <= now, Job.attempts > 0, Job.kind != JOB_WATCH))))
        ).all()
    pending: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for key, _kind, state in waiting:
        (dead if state == jobs.DEAD else pending)[key] += 1
    by_tech: dict[int, list[Connection]] = {}
    for connection in connections:
        by_tech.setdefault(connection.tech_id, []).append(connection)
    rows: list[HealthRow] = []
    for tech in techs:
        own = by_tech.get(tech.id, [])
        booking_keys = [k for k in set(pending) | set(dead) if k.startswith(f"push:{tech.username}/bookings/")]
        if not own:
            rows.append(HealthRow(tech.username, tech.name, "", "", NOT_CONNECTED, None, "",
                                  sum(pending[k] for k in booking_keys), sum(dead[k] for k in booking_keys),
                                  0, None, False))
            continue
        for connection in own:
            mine = [c for c in calendars if c.connection_id == connection.id]
            keys = {f"import:{connection.id}", *booking_keys}
            for calendar in mine:
                keys |= {f"sync:{calendar.id}", f"watch:{calendar.id}"}
                if calendar.local_path:
                    keys |= {k for k in set(pending) | set(dead) if k.startswith(f"push:{calendar.local_path}/")}
            selected = [c for c in mine if c.selected]
            expiries = [_aware(c.watch_expires) for c in selected if c.watch_expires is not None]
            rows.append(HealthRow(
                tech.username, tech.name, connection.provider, connection.account, connection.state,
                connection.last_success, connection.last_error, sum(pending[k] for k in keys),
                sum(dead[k] for k in keys), len(selected), min(expiries) if expiries else None,
                bool(selected) and not expiries))
    return rows


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_age(seconds: float | None) -> str:
    """"42 s", "5 min", "3 h", "2 d" — how long ago, for a glance."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"
