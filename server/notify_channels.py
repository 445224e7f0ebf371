"""What every notification channel shares: the message to deliver and the one error type.

A channel (email, webhook) turns a :class:`Outgoing` into one delivery attempt.
It raises :class:`DeliveryError`; ``permanent`` says whether trying again can
help (a refused recipient, a 4xx from the webhook) or not (a timeout, a 5xx).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

EMAIL, WEBHOOK = "email", "webhook"
# Job kinds: one fan-out per notify() call, then one delivery job per channel and recipient set.
JOB_FANOUT = "notify_fanout"
JOB_EMAIL = "notify_email"
JOB_WEBHOOK = "notify_webhook"
CHANNEL_OF_JOB = {JOB_EMAIL: EMAIL, JOB_WEBHOOK: WEBHOOK}

# The kinds the sync engine raises (server/caldav_bridge), with a subject line each.
KIND_TITLES = {
    "conflict": "Personal event overlaps a booking",
    "booking_reverted": "Booking changed in the provider calendar",
    "needs_reauth": "Calendar connection needs re-authorization",
    "sync_recovered": "Sync recovered: bookings added during the outage",
}


class DeliveryError(Exception):
    """A failed delivery attempt; transient ones are retried with backoff, permanent ones are not."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Outgoing:
    """One notification row as the channels see it."""

    id: int
    kind: str
    tech: str
    tech_name: str
    audience: str  # tech | dispatcher
    message: str
    created_at: datetime

    @property
    def title(self) -> str:
        return KIND_TITLES.get(self.kind, self.kind.replace("_", " ").capitalize())

    @property
    def created_at_utc(self) -> str:
        """RFC 3339 UTC with ``Z`` (SQLite hands back naive datetimes: they are UTC)."""
        moment = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def subject(self) -> str:
        who = f"{self.tech_name} ({self.tech})" if self.tech_name and self.tech_name != self.tech else self.tech
        return f"[Lockstep] {self.title}: {who}"

    def text(self) -> str:
        """The plain-text email body."""
        return (
            f"{self.message}\n\n"
            f"Tech: {self.tech_name or self.tech} ({self.tech})\n"
            f"Kind: {self.kind}\n"
            f"When: {self.created_at_utc}\n"
            f"Notification: #{self.id}\n\n"
            "-- \nSent by Lockstep. Open the admin panel for details.\n"
        )
