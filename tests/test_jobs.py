"""The job queue: exclusive claims across workers, leases, backoff, dead letters."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
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

    def handle(own: Database, name: str, job: jobs.ClaimedJob) -> None:
        with lock:
            claimed.append((name, job.payload["n"]))
        jobs.complete(own, job)

    _claim_in_threads(database_url, 4, handle)
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


def test_a_key_runs_one_job_at_a_time_and_other_keys_go_ahead(database: Database) -> None:
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"n": 1}, dedupe_key="sync:1")
    first = jobs.claim(database, worker="a")
    assert first is not None
    with database.write([]) as session:  # a push notification during the sync: a new sync of it
        assert jobs.enqueue(session, "sync", {"n": 2}, dedupe_key="sync:1") is not None
        jobs.enqueue(session, "sync", {"n": 3}, dedupe_key="sync:2")
        jobs.enqueue(session, "push", {"n": 4}, dedupe_key="sync:1")  # same key, another kind
    other_key = jobs.claim(database, worker="b")
    other_kind = jobs.claim(database, worker="b")
    assert other_key is not None and other_key.payload == {"n": 3}
    assert other_kind is not None and other_kind.payload == {"n": 4}
    assert jobs.claim(database, worker="b") is None  # sync:1 still running
    assert jobs.complete(database, first) == jobs.DONE
    second = jobs.claim(database, worker="b")
    assert second is not None and second.payload == {"n": 2}
    # A failure frees the key too (its retry waits for its backoff like any other).
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"n": 5}, dedupe_key="sync:1")
    assert jobs.claim(database, worker="c") is None
    assert jobs.fail(database, second, "503", retry_after=3600) == jobs.READY
    third = jobs.claim(database, worker="c")
    assert third is not None and third.payload == {"n": 5}


def test_a_dead_workers_keyed_job_is_taken_over_and_holds_its_key(database: Database) -> None:
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"n": 1}, dedupe_key="sync:7")
    now = datetime.now(UTC)
    first = jobs.claim(database, worker="killed", lease=timedelta(seconds=30), now=now)
    assert first is not None
    with database.write([]) as session:
        jobs.enqueue(session, "sync", {"n": 2}, dedupe_key="sync:7")
    assert jobs.claim(database, worker="other", now=now + timedelta(seconds=10)) is None
    later = now + timedelta(seconds=31)
    taken = jobs.claim(database, worker="other", lease=timedelta(seconds=30), now=later)
    assert taken is not None and taken.id == first.id and taken.attempts == 2
    assert jobs.claim(database, worker="third", now=later) is None  # the taken-over job holds the key


def _add_jobs(database: Database, keys: list[str], per_key: int) -> int:
    """``per_key`` waiting jobs for each key, side by side (as a running job's key collects them)."""
    from server.models import Job

    now = datetime.now(UTC)
    with database.write([]) as session:
        for n in range(per_key):
            for key in keys:
                session.add(Job(kind="sync", payload="{}", dedupe_key=key, state=jobs.READY, attempts=0,
                                run_at=now, created_at=now, updated_at=now))
    return per_key * len(keys)


def test_concurrent_claimers_never_run_two_jobs_of_one_key(database: Database, database_url: str) -> None:
    total = _add_jobs(database, ["sync:1", "sync:2", "sync:3", ""], per_key=12)
    running: dict[str, str] = {}
    overlaps: list[str] = []
    done = Counter[str]()
    lock = threading.Lock()

    def handle(own: Database, name: str, job: jobs.ClaimedJob) -> None:
        key = job.dedupe_key or f"unkeyed:{job.id}"
        with lock:  # from claimed to about to complete: no other claim of the key may start
            if key in running:
                overlaps.append(f"{key}: {running[key]} and {name}")
            running[key] = name
        threading.Event().wait(0.01)  # the work: long enough for others to try the key
        with lock:
            if running.get(key) == name:
                del running[key]
            done[job.dedupe_key] += 1
        jobs.complete(own, job)

    # Patience: a claimer finds nothing while the keys left are all running elsewhere.
    _claim_in_threads(database_url, 6, handle, patience=20)
    assert overlaps == []
    assert sum(done.values()) == total
    assert jobs.pending_counts(database) == {"done": total}



def _claim_in_threads(database_url: str, count: int, handle: Callable[[Database, str, jobs.ClaimedJob], None],
                      *, patience: int = 0) -> None:
    """``count`` threads claim and handle jobs until the queue has come up empty ``patience``
    times in a row after the first; each has its own connections, as separate processes have."""
    def work(name: str) -> None:
        own = Database(database_url)
        try:
            idle = 0
            while idle <= patience:
                job = jobs.claim(own, worker=name)
                if job is None:
                    idle += 1
                    threading.Event().wait(0.02)
                    continue
                idle = 0
                handle(own, name, job)
        finally:
            own.dispose()

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
