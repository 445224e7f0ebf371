"""Notifications for techs and the dispatcher (shown in the admin panel; delivery channels later)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from server.models import Notification

log = logging.getLogger("lockstep.notify")


def notify(session: Session, tech: str, kind: str, message: str, *, dispatcher: bool = True) -> None:
    """Tell the tech, and (by default) the dispatcher, in the caller's transaction."""
    audiences = ["tech", "dispatcher"] if dispatcher else ["tech"]
    for audience in audiences:
        session.add(Notification(audience=audience, tech=tech, kind=kind, message=message))
    log.info("notify %s (%s): %s", tech, kind, message)
