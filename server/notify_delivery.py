"""Queued, retried delivery of notifications, off the sync workers' threads.

Each ``notify()`` call queues one ``notify_fanout`` job. The fan-out, run here
with the configured channels, queues one job per channel: email to the
dispatcher's addresses (``[notify] email_to``) and to the tech's own address
(``email_techs``), and one signed webhook per event. Each channel has its own
thread ("lane"), so a dead SMTP server holds up neither the webhook nor any
sync job: the sync workers never claim these kinds, and every attempt is
bounded by the channel's timeout.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable
from urllib.parse import urlsplit

from sqlalchemy import select

from server import jobs
from server.config import Config
from server.db import Database
from server.models import Job, Notification, Tech
from server.notify_channels import EMAIL, JOB_EMAIL, JOB_FANOUT, JOB_WEBHOOK, WEBHOOK, DeliveryError, Outgoing
from server.notify_email import SmtpSettings, send_email
from server.notify_webhook import WebhookSettings, send_webhook

log = logging.getLogger("lockstep.notify")
IDLE_WAIT = 0.5


@dataclass(frozen=True)
class Channels:
    """The delivery channels this process's configuration turns on."""

    smtp: SmtpSettings | None
    webhook: WebhookSettings | None
    email_to: tuple[str, ...]
    email_techs: bool
    max_attempts: int

    @classmethod
    def from_config(cls, config: Config) -> Channels:
        values = config.values["notify"]
        recipients = tuple(a.strip() for a in str(values["email_to"]).split(",") if a.strip())
        return cls(smtp=SmtpSettings.from_config(config), webhook=WebhookSettings.from_config(config),
                   email_to=recipients, email_techs=bool(values["email_techs"]),
                   max_attempts=max(1, int(values["max_attempts"])))

    @property
    def enabled(self) -> list[str]:
        return ([EMAIL] if self.smtp else []) + ([WEBHOOK] if self.webhook else [])

    def lease(self, kind: str) -> timedelta:
        """Longer than an attempt can take (smtplib bounds each socket operation, not the whole)."""
        timeout = (self.smtp.timeout if kind == JOB_EMAIL and self.smtp else
                   self.webhook.timeout if kind == JOB_WEBHOOK and self.webhook else 10.0)
        return max(jobs.DEFAULT_LEASE, timedelta(seconds=timeout * 12))


def dedupe_key(tech: str, notification_id: int, channel: str) -> str:
    return f"notify:{tech}:{notification_id}:{channel}"


# -- fan-out -------------------------------------------------------------------------------------
def fan_out(database: Database, channels: Channels, notification_ids: list[int]) -> int:
    """Queue the deliveries of these notification rows; idempotent (a re-run after a crash queues
    nothing twice). Returns how many deliveries were queued."""
    queued = 0
    with database.write([]) as session:
        rows = session.scalars(select(Notification).where(Notification.id.in_(notification_ids))
                               .order_by(Notification.id)).all()
        if not rows:
            return 0
        has_dispatcher = any(row.audience == "dispatcher" for row in rows)
        emails = dict(session.execute(select(Tech.username, Tech.email).where(
            Tech.username.in_({row.tech for row in rows}))).all())
        for row in rows:
            for kind, channel, payload in _deliveries_for(row, channels, emails, has_dispatcher):
                key = dedupe_key(row.tech, row.id, channel)
                if session.scalar(select(Job.id).where(Job.kind == kind, Job.dedupe_key == key).limit(1)):
                    continue
                jobs.enqueue(session, kind, payload, dedupe_key=key)
                queued += 1
    return queued


def _deliveries_for(row: Notification, channels: Channels, emails: dict[str, str],
                    has_dispatcher: bool) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    if channels.smtp is not None:
        to = list(channels.email_to) if row.audience == "dispatcher" else (
            [emails[row.tech]] if channels.email_techs and emails.get(row.tech) else [])
        if to:
            out.append((JOB_EMAIL, EMAIL, {"notification": row.id, "to": to, "target": ", ".join(to)}))
    # One webhook per event: the dispatcher's copy, or the tech's when the event had no dispatcher copy.
    if channels.webhook is not None and (row.audience == "dispatcher" or not has_dispatcher):
        origin = urlsplit(channels.webhook.url)
        out.append((JOB_WEBHOOK, WEBHOOK, {"notification": row.id, "target": f"{origin.scheme}://{origin.netloc}"}))
    return out


# -- sending -------------------------------------------------------------------------------------
def load_outgoing(database: Database, notification_id: int) -> Outgoing:
    with database.read() as session:
        row = session.get(Notification, notification_id)
        if row is None:
            raise LookupError(f"notification {notification_id} is gone")
        name = session.scalar(select(Tech.name).where(Tech.username == row.tech)) or ""
        return Outgoing(id=row.id, kind=row.kind, tech=row.tech, tech_name=name, audience=row.audience,
                        message=row.message, created_at=row.created_at)


def handlers(database: Database, channels: Channels) -> dict[str, Callable[[dict[str, Any]], None]]:
    def email(payload: dict[str, Any]) -> None:
        if channels.smtp is None:
            raise DeliveryError("email is no longer configured ([smtp] host is empty)", permanent=True)
        send_email(channels.smtp, list(payload["to"]), load_outgoing(database, int(payload["notification"])))

    def webhook(payload: dict[str, Any]) -> None:
        if channels.webhook is None:
            raise DeliveryError("the webhook is no longer configured ([notify] webhook_url is empty)",
                                permanent=True)
        send_webhook(channels.webhook, load_outgoing(database, int(payload["notification"])))

    def fanout(payload: dict[str, Any]) -> None:
        fan_out(database, channels, [int(i) for i in payload["notifications"]])

    return {JOB_FANOUT: fanout, JOB_EMAIL: email, JOB_WEBHOOK: webhook}


def run_one(database: Database, channels: Channels, kinds: list[str]) -> bool:
    """Run one due job of ``kinds``; False when there was none."""
    if not jobs.any_due(database, kinds):  # a read: no write lock taken while idle
        return False
    lease = channels.lease(kinds[0])
    job = jobs.claim(database, kinds, lease=lease)
    if job is None:
        return False
    try:
        with jobs.lease_kept(database, job, lease):  # a slow-drip server must not get the mail sent twice
            handlers(database, channels)[job.kind](job.payload)
    except LookupError as exc:
        log.info("%s %s dropped: %s", job.kind, job.id, exc)
        jobs.complete(database, job)
    except DeliveryError as exc:
        permanent = exc.permanent or job.attempts >= channels.max_attempts
        state = jobs.fail(database, job, str(exc), permanent=permanent)
        log.warning("%s %s failed (%s, attempt %d of %d): %s", job.kind, job.id, state, job.attempts,
                    channels.max_attempts, exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the lane; the job retries
        log.exception("%s %s crashed", job.kind, job.id)
        jobs.fail(database, job, f"{type(exc).__name__}: {exc}", permanent=job.attempts >= channels.max_attempts)
    else:
        jobs.complete(database, job)
        if job.kind != JOB_FANOUT:
            log.info("%s %s delivered (notification %s)", job.kind, job.id, job.payload.get("notification"))
    return True


def start_delivery_workers(database: Database, config: Config, stop: threading.Event) -> list[threading.Thread]:
    """One thread per lane: fan-out always (it drains notify()'s jobs), email and webhook when configured."""
    channels = Channels.from_config(config)
    lanes = [("notify-fanout", [JOB_FANOUT])]
    if channels.smtp is not None:
        lanes.append(("notify-email", [JOB_EMAIL]))
    if channels.webhook is not None:
        lanes.append(("notify-webhook", [JOB_WEBHOOK]))
        if not channels.webhook.secret:
            log.warning("[notify] webhook_url is set without webhook_secret: webhooks go out unsigned")

    def lane(kinds: list[str]) -> None:
        while not stop.is_set():
            try:
                if not run_one(database, channels, kinds):
                    stop.wait(IDLE_WAIT)
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable
                log.exception("notification lane %s error; retrying", kinds)
                stop.wait(2)

    threads = [threading.Thread(target=lane, args=(kinds,), name=name, daemon=True) for name, kinds in lanes]
    for thread in threads:
        thread.start()
    log.info("notification delivery: %s", ", ".join(channels.enabled) or "no channel configured (rows only)")
    return threads
