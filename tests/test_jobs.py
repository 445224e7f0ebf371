"""The job queue: exclusive claims across workers, leases, backoff, dead letters."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from server import jobs
from server.db import Database
from tests.support.lockstep_server import PG_ENV, postgres_schema

UTC = timezone.utc


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "postgresql":
        with postgres_schema(os.environ[PG_ENV]) as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    yield db
    db.dispose()


def test_each_job_is_claimed_by_exactly_one_worker(database: Database, database_url: str) -> None:
    with database.write([]) as session:
        for n in range(120):
            jobs.enqueue(session, "sync", {"n": n})
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        own = Database(database_url)  # each worker its own connections, as separate processes have
        try:
            while (job := jobs.claim(own, worker=name)) is not None:
                with lock:
                    claimed.append((name, job.payload["n"]))
                jobs.complete(own, job)
        finally:
            own.dispose()

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    counts = Counter(n for _, n in claimed)
    assert sorted(counts) == list(range(120))
    assert set(counts.values()) == {1}
    assert jobs.pending_counts(database) == {"done": 120}


def test_a_dead_workers_job_is_taken_over_after_its_lease(database: Database) -> None:
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"tech": "mike"})
    now = datetime.now(UTC)
    first = jobs.claim(database, worker="killed", lease=timedelta(seconds=30), now=now)
    assert first is not None
    assert jobs.claim(database, worker="other", now=now + timedelta(seconds=10)) is None  # lease holds
    second = jobs.claim(database, worker="other", now=now + timedelta(seconds=31))
    assert second is not None and second.id == first.id and second.attempts == 2


def test_failures_back_off_honour_retry_after_and_end_dead(database: Database) -> None:
    with database.write([]) as session:
        jobs.enqueue(session, "push", {})
    now = datetime.now(UTC)
    job = jobs.claim(database, now=now)
    assert job is not None
    assert jobs.fail(database, job, "429 Too Many Requests", retry_after=120, now=now) == jobs.READY
    assert jobs.claim(database, now=now + timedelta(seconds=119)) is None
    job = jobs.claim(database, now=now + timedelta(seconds=121))
    assert job is not None
    assert jobs.fail(database, job, "invalid_grant", permanent=True, now=now) == jobs.DEAD
    assert jobs.claim(database, now=now + timedelta(days=1)) is None
    assert jobs.pending_counts(database) == {"dead": 1}


def test_backoff_grows_and_is_capped() -> None:
    delays = [jobs.backoff(n).total_seconds() for n in range(1, 20)]
    assert delays[0] <= 2 and delays[5] >= 2 ** 6 / 2
    assert max(delays) <= jobs.BACKOFF_CAP.total_seconds()
    assert jobs.backoff(1, retry_after=90).total_seconds() >= 90


def test_waiting_duplicates_collapse(database: Database) -> None:
    with database.write([]) as session:
        assert jobs.enqueue(session, "sync", {"c": 1}, dedupe_key="mike/primary") is not None
        assert jobs.enqueue(session, "sync", {"c": 1}, dedupe_key="mike/primary") is None
        assert jobs.enqueue(session, "sync", {"c": 2}, dedupe_key="ana/primary") is not None
    assert jobs.pending_counts(database) == {"ready": 2}


def test_a_renewed_lease_holds_and_a_lost_one_changes_nothing(database: Database) -> None:
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"tech": "ana"})
    lease = timedelta(seconds=1.5)
    first = jobs.claim(database, worker="slow", lease=lease)
    assert first is not None
    with jobs.lease_kept(database, first, lease):  # renewed while the job runs past its lease
        threading.Event().wait(3.5)
        assert jobs.claim(database, worker="other") is None
    second = None
    for _ in range(100):  # no longer renewed: the lease runs out and the job is taken over
        second = jobs.claim(database, worker="other", lease=timedelta(minutes=1))
        if second is not None:
            break
        threading.Event().wait(0.1)
    assert second is not None and second.id == first.id
    # The stalled first worker wakes up: it can neither renew nor finish the taken-over job.
    assert not jobs.renew(database, first)
    assert jobs.complete(database, first) == jobs.LOST
    assert jobs.fail(database, first, "late") == jobs.LOST
    assert jobs.pending_counts(database) == {"running": 1}
    assert jobs.complete(database, second) == jobs.DONE
    assert jobs.pending_counts(database) == {"done": 1}
