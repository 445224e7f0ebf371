"""The audit log: one row per admin action (who, what, when), never a secret."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import Database
from server.models import AuditEntry

AUDIT_LOCK = "admin-audit"


def add(session: Session, actor: str, action: str, target: str = "", detail: str = "") -> None:
    """Record an action in the caller's transaction (same commit as the change when possible)."""
    session.add(AuditEntry(actor=actor[:64], action=action[:64], target=target[:300], detail=detail))


def record(database: Database, actor: str, action: str, target: str = "", detail: str = "") -> None:
    """Record an action done by a service function that commits on its own."""
    with database.write([AUDIT_LOCK]) as session:
        add(session, actor, action, target, detail)


def recent(database: Database, *, limit: int = 200, actor: str | None = None) -> list[AuditEntry]:
    with database.read() as session:
        query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
        if actor:
            query = query.where(AuditEntry.actor == actor)
        return list(session.scalars(query))
