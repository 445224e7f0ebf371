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

from sqlalchemy import ColumnElement, Select, and_, bindparam, or_, select, text, update
from sqlalchemy.orm import aliased

from server.db import Database, Query, advisory_key
from server.models import Job

log = logging.getLogger("lockstep.jobs")
UTC = timezone.utc
READY, RUNNING, DONE, DEAD = "ready", "running", "done", "dead"
LOST = "lost"  # what complete/fail report when another worker had taken the job over
DEFAULT_LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 12
BACKOFF_BASE = 2.0
BACKOFF_CAP = timedelta(minutes=30)
CLAIM_TRIES = 20  # keyed jobs found busy in one claim before it gives up until the next round


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    worker: str = ""
    dedupe_key: str = ""


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
    """Take the oldest due job (or one whose lease ran out), exclusively, skipping any whose
    (kind, dedupe key) has another job running on a live lease.

    One job per key at a time: two syncs of one calendar would read the same cursor and both
    write it back, and would mirror the same remote changes side by side (issue 7). A job
    whose key is busy stays waiting and the claim moves on to the next due one, never blocks.

    The check alone is not enough on PostgreSQL: under READ COMMITTED two claimers can each
    lock (SKIP LOCKED) a different job of one key, both seeing no running sibling. So a
    keyed job becomes RUNNING only under ``pg_try_advisory_xact_lock`` of its key, and the
    check is repeated once the lock is held: a new statement sees every claim committed
    before the lock was released (PostgreSQL ends a transaction's visibility before it
    releases its locks), and a claim still in flight holds the lock, so we skip. A partial
    unique index on running keys would also hold, but a clash there waits for the other
    transaction and then aborts ours, and it would forbid taking a job over from a dead
    worker while a sibling is marked running. SQLite claims under ``BEGIN IMMEDIATE``:
    one claimer at a time, the check suffices.
    """
    now = now or datetime.now(UTC)
    with database.write([]) as session:
        if not database.is_sqlite:  # the re-check under the key's lock needs a statement-fresh snapshot
            session.connection(execution_options={"isolation_level": "READ COMMITTED"})
        skipped: list[int] = []
        for _ in range(CLAIM_TRIES):
            query = _due(now, kinds, skipped)
            if not database.is_sqlite:
                query = query.with_for_update(skip_locked=True, of=Job)
            job = session.scalar(query)
            if job is None:
                return None
            if job.dedupe_key and not database.is_sqlite and not _key_free(session, job, now):
                skipped.append(job.id)  # locked by us until commit: other claimers skip it as well
                continue
            job.state = RUNNING
            job.attempts += 1
            job.lease_until = now + lease
            job.worker = worker or worker_name()
            job.updated_at = now
            return ClaimedJob(int(job.id), job.kind, json.loads(job.payload), job.attempts, job.worker,
                              job.dedupe_key)
        return None


def due_query(kinds: list[str], now: datetime | None = None) -> Query:
    """Is a job of ``kinds`` due (or its lease run out)? For ``Database.read_many``.

    Idle workers ask several times a second; a claim is a write transaction (a lock, and on
    PostgreSQL several round trips), so they read first and claim only when this finds one."""
    return _ANY_DUE, {"kinds": kinds, "now": now or datetime.now(UTC)}


def any_due(database: Database, kinds: list[str]) -> bool:
    [rows] = database.read_many([due_query(kinds)])
    return bool(rows)


_ANY_DUE = select(Job.id).where(
    Job.kind.in_(bindparam("kinds", expanding=True)),
    or_(and_(Job.state == READY, Job.run_at <= bindparam("now")),
        and_(Job.state == RUNNING, Job.lease_until < bindparam("now"))),
).limit(1)


def _due(now: datetime, kinds: list[str] | None, skipped: list[int]) -> Select[tuple[Job]]:
    """The oldest due job whose key has no other job running on a live lease."""
    sibling = aliased(Job)
    key_busy = select(sibling.id).where(*_live_sibling(sibling, Job.kind, Job.dedupe_key, Job.id, now)).exists()
    due = or_(and_(Job.state == READY, Job.run_at <= now),
              and_(Job.state == RUNNING, Job.lease_until < now))
    query = select(Job).where(due, or_(Job.dedupe_key == "", ~key_busy)).order_by(Job.run_at, Job.id).limit(1)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if skipped:
        query = query.where(Job.id.notin_(skipped))
    return query


def _key_free(session: Any, job: Job, now: datetime) -> bool:
    """Hold the key's advisory lock (without waiting) and see, in a fresh snapshot, no sibling running."""
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"),
                          {"key": advisory_key(f"job:{job.kind}:{job.dedupe_key}")}):
        return False
    return session.scalar(select(Job.id).where(
        *_live_sibling(Job, job.kind, job.dedupe_key, job.id, now)).limit(1)) is None


def _live_sibling(row: Any, kind: Any, key: Any, job_id: Any, now: datetime) -> list[ColumnElement[bool]]:
    """``row`` is another job of this kind and key, running on a lease that has not run out."""
    return [row.kind == kind, row.dedupe_key == key, row.id != job_id, row.state == RUNNING, row.lease_until >= now]


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
