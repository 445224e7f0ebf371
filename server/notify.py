"""Notifications for techs and the dispatcher: rows in the database, then delivery by email and webhook.

``notify()`` writes the rows and queues one fan-out job in the caller's
transaction, so a notification exists exactly when the change that caused it
commits. The fan-out (server/notify_delivery.py, run by the background
workers that know the configured channels) turns it into one delivery job per
channel; ``deliveries()`` lists their state for the admin panel.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server import jobs
from server.db import Database
from server.models import Job, Notification
from server.notify_channels import CHANNEL_OF_JOB, JOB_FANOUT

log = logging.getLogger("lockstep.notify")

# What a delivery job's queue state means to a person.
DELIVERY_STATES = {jobs.READY: "queued", jobs.RUNNING: "sending", jobs.DONE: "sent", jobs.DEAD: "failed"}


def notify(session: Session, tech: str, kind: str, message: str, *, dispatcher: bool = True) -> None:
    """Tell the tech, and (by default) the dispatcher, in the caller's transaction."""
    audiences = ["tech", "dispatcher"] if dispatcher else ["tech"]
    rows = [Notification(audience=audience, tech=tech, kind=kind, message=message) for audience in audiences]
    session.add_all(rows)
    session.flush()
    jobs.enqueue(session, JOB_FANOUT, {"notifications": [row.id for row in rows]})
    log.info("notify %s (%s): %s", tech, kind, message)


@dataclass(frozen=True)
class Delivery:
    """One notification on one channel: where it goes and how it went."""

    id: int  # the delivery job
    notification_id: int
    channel: str  # email | webhook
    target: str  # recipients, or the webhook's origin (never its path: it may hold a token)
    kind: str
    tech: str
    audience: str
    message: str
    state: str  # queued | retrying | sending | sent | failed
    attempts: int
    last_error: str
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None


def deliveries(database: Database, limit: int = 100, *, tech: str | None = None) -> list[Delivery]:
    """The newest deliveries first (optionally of one tech's notifications)."""
    with database.read() as session:
        query = select(Job).where(Job.kind.in_(list(CHANNEL_OF_JOB))).order_by(Job.id.desc())
        if tech is not None:
            query = query.where(Job.dedupe_key.like(f"notify:{_like_escape(tech)}:%", escape="\\"))
        rows = session.scalars(query.limit(limit)).all()
        payloads = {row.id: json.loads(row.payload or "{}") for row in rows}
        ids = {int(p.get("notification", 0)) for p in payloads.values()}
        notes = {n.id: n for n in session.scalars(select(Notification).where(Notification.id.in_(ids)))}
    out = []
    for row in rows:
        payload = payloads[row.id]
        note = notes.get(int(payload.get("notification", 0)))
        state = DELIVERY_STATES.get(row.state, row.state)
        if state == "queued" and row.attempts:
            state = "retrying"
        out.append(Delivery(
            id=int(row.id), notification_id=int(payload.get("notification", 0)), channel=CHANNEL_OF_JOB[row.kind],
            target=str(payload.get("target", "")), kind=note.kind if note else "", tech=note.tech if note else "",
            audience=note.audience if note else "", message=note.message if note else "",
            state=state, attempts=int(row.attempts), last_error=row.last_error or "",
            created_at=row.created_at, updated_at=row.updated_at,
            next_attempt_at=row.run_at if row.state == jobs.READY else None))
    return out


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
