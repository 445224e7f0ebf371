"""A job queue in the database: workers on any node claim jobs exclusively, with a lease.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``; SQLite, which has a single
writer, claims inside ``BEGIN IMMEDIATE``. A claim is a lease (``lease_until``)
that the worker renews while it works (:func:`lease_kept`); a worker that dies
mid-job stops renewing, and once the lease has run out another worker takes the
job over. A worker that lost its lease (stalled past it) finds out when it
renews or finishes: it then changes nothing, since the job belongs to the
worker that took it over. Transient failures retry with exponential
backoff (or the provider's Retry-After); permanent ones, or too many attempts,
park the job as ``dead`` with its last error for the health page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update

from server.db import Database
from server.models import Job

log = logging.getLogger("lockstep.jobs")
UTC = timezone.utc
READY, RUNNING, DONE, DEAD = "ready", "running", "done", "dead"
LOST = "lost"  # what complete/fail report when another worker had taken the job over
DEFAULT_LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 12
BACKOFF_BASE = 2.0
BACKOFF_CAP = timedelta(minutes=30)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    worker: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(session: Any, kind: str, payload: dict[str, Any] | None = None, *,
            dedupe_key: str = "", delay: timedelta = timedelta(0)) -> int | None:
    """Add a job in the caller's transaction. With ``dedupe_key``, a job of the same kind and
    key still waiting absorbs this one (a burst of webhooks becomes one sync)."""
    if dedupe_key:
        waiting = session.scalar(select(Job.id).where(
            Job.kind == kind, Job.dedupe_key == dedupe_key, Job.state == READY).limit(1))
        if waiting is not None:
            return None
    now = datetime.now(UTC)
    job = Job(kind=kind, payload=json.dumps(payload or {}, sort_keys=True), dedupe_key=dedupe_key,
              state=READY, attempts=0, run_at=now + delay, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    return int(job.id)


def claim(database: Database, kinds: list[str] | None = None, *, worker: str | None = None,
          lease: timedelta = DEFAULT_LEASE, now: datetime | None = None) -> ClaimedJob | None:
    """Take the oldest due job (or one whose lease ran out), exclusively."""
    now = now or datetime.now(UTC)
    due = or_(and_(Job.state == READY, Job.run_at <= now),
              and_(Job.state == RUNNING, Job.lease_until < now))
    query = select(Job).where(due).order_by(Job.run_at, Job.id).limit(1)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if not database.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with database.write([]) as session:
        job = session.scalar(query)
        if job is None:
            return None
        job.state = RUNNING
        job.attempts += 1
        job.lease_until = now + lease
        job.worker = worker or worker_name()
        job.updated_at = now
        return ClaimedJob(int(job.id), job.kind, json.loads(job.payload), job.attempts, job.worker)


def _owned(job: ClaimedJob) -> ColumnElement[bool]:
    """Still this claim's: running, by this worker, at this attempt (a takeover bumps attempts)."""
    return and_(Job.id == job.id, Job.state == RUNNING, Job.worker == job.worker, Job.attempts == job.attempts)


def renew(database: Database, job: ClaimedJob, lease: timedelta = DEFAULT_LEASE) -> bool:
    """Push the lease out to now + ``lease``; False when the job is no longer this claim's."""
    with database.write([]) as session:
        result = session.execute(update(Job).where(_owned(job)).values(lease_until=datetime.now(UTC) + lease))
        return bool(result.rowcount)


@contextlib.contextmanager
def lease_kept(database: Database, job: ClaimedJob, lease: timedelta = DEFAULT_LEASE) -> Iterator[None]:
    """Renew the lease every third of its length while the body runs.

    Only a live worker renews, so the lease can be short (a killed worker's job
    is taken over quickly) and a job may still run longer than the lease.
    """
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease.total_seconds() / 3):
            try:
                if not renew(database, job, lease):
                    log.warning("job %s %s: lease lost to another worker", job.kind, job.id)
                    return
            except Exception:  # noqa: BLE001 - e.g. the database briefly gone; try again next round
                log.warning("job %s %s: lease renewal failed; retrying", job.kind, job.id, exc_info=True)

    renewer = threading.Thread(target=keep, name=f"lease-{job.id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def complete(database: Database, job: ClaimedJob) -> str:
    """Mark the job done; returns DONE, or LOST if another worker had taken it over."""
    with database.write([]) as session:
        result = session.execute(update(Job).where(_owned(job)).values(
            state=DONE, lease_until=None, last_error="", updated_at=datetime.now(UTC)))
    return DONE if result.rowcount else LOST


def fail(database: Database, job: ClaimedJob, error: str, *, permanent: bool = False,
         retry_after: float | None = None, now: datetime | None = None) -> str:
    """Record a failure; returns the job's new state (ready again, or dead), or LOST."""
    now = now or datetime.now(UTC)
    dead = permanent or job.attempts >= MAX_ATTEMPTS
    delay = backoff(job.attempts, retry_after)
    with database.write([]) as session:
        result = session.execute(update(Job).where(_owned(job)).values(
            state=DEAD if dead else READY, lease_until=None, run_at=now + delay,
            last_error=error[:2000], updated_at=now))
    if not result.rowcount:
        return LOST
    return DEAD if dead else READY


def backoff(attempts: int, retry_after: float | None = None) -> timedelta:
    """Exponential with jitter, never sooner than the provider asked (Retry-After)."""
    exponential = min(BACKOFF_CAP.total_seconds(), BACKOFF_BASE ** attempts)
    delay = exponential * (0.5 + random.random() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return timedelta(seconds=delay)


def pending_counts(database: Database) -> dict[str, int]:
    from sqlalchemy import func

    with database.read() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: int(count) for state, count in rows}
