"""Worker threads: dispatch the change log, claim jobs, run them, record trouble; plus the poll timer."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from server import jobs, metrics
from server.caldav_bridge import outbox
from server.caldav_bridge.engine import Bridge
from server.notify_delivery import start_delivery_workers
from server.providers.base import AuthorizationLost, ProviderError

log = logging.getLogger("lockstep.worker")
IDLE_WAIT = 0.2


def run_job_once(bridge: Bridge) -> bool:
    """Dispatch new changes, then run one due job; False when there was nothing to do.

    Both are write transactions; an idle worker looks first, with two reads in one round trip,
    and so asks several times a second without taking a lock."""
    handlers = bridge.handlers()
    changed, due = bridge.database.read_many([outbox.waiting_query(), jobs.due_query(list(handlers))])
    if changed:
        bridge.dispatch()
    elif not due:
        return False
    lease = timedelta(seconds=int(bridge.config.get("sync", "lease_seconds")))
    job = jobs.claim(bridge.database, list(handlers), lease=lease)
    if job is None:
        return False
    started = time.monotonic()
    try:
        with jobs.lease_kept(bridge.database, job, lease):
            handlers[job.kind](job.payload)
    except LookupError as exc:  # the calendar or connection is gone: nothing left to do
        log.info("job %s %s dropped: %s", job.kind, job.id, exc)
        jobs.complete(bridge.database, job)
        metrics.count_job(job.kind, "dropped")
    except ProviderError as exc:
        metrics.count_provider_error(_provider_name(bridge, job.payload), exc)
        bridge.mark_trouble(job.payload, exc)
        state = jobs.fail(bridge.database, job, str(exc), permanent=exc.permanent, retry_after=exc.retry_after)
        level = logging.WARNING if isinstance(exc, AuthorizationLost) or state == jobs.DEAD else logging.INFO
        log.log(level, "job %s %s failed (%s, attempt %d): %s", job.kind, job.id, state, job.attempts, exc)
        metrics.count_job(job.kind, "dead" if state == jobs.DEAD else "retry")
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker; the job retries
        log.exception("job %s %s crashed", job.kind, job.id)
        jobs.fail(bridge.database, job, f"{type(exc).__name__}: {exc}")
        metrics.count_job(job.kind, "crashed")
    else:
        jobs.complete(bridge.database, job)
        log.debug("job %s %s done in %.2fs", job.kind, job.id, time.monotonic() - started)
        metrics.count_job(job.kind, "done")
    return True


def _provider_name(bridge: Bridge, payload: dict) -> str:
    """The provider a failed job talked to (the error counter's label)."""
    from sqlalchemy import select

    from server.models import Connection

    try:
        connection_id = bridge._connection_of(payload)
        if connection_id is None:
            return "unknown"
        with bridge.database.read() as session:
            return session.scalar(select(Connection.provider).where(Connection.id == connection_id)) or "unknown"
    except Exception:  # noqa: BLE001 - a label must never turn one failure into two
        return "unknown"


def start_sync_workers(bridge: Bridge, stop: threading.Event, count: int) -> list[threading.Thread]:
    def work() -> None:
        while not stop.is_set():
            try:
                if not run_job_once(bridge):
                    stop.wait(IDLE_WAIT)
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable
                log.exception("worker loop error; retrying")
                stop.wait(2)

    def poll() -> None:
        intervals = bridge.poll_intervals()  # provider -> seconds; None: every other provider
        own = [name for name in intervals if name is not None]
        due = {name: time.monotonic() + seconds for name, seconds in intervals.items()}
        while not stop.wait(max(0.05, min(due.values()) - time.monotonic())):
            for name in [n for n, when in due.items() if when <= time.monotonic()]:
                due[name] = time.monotonic() + intervals[name]
                try:
                    queued = bridge.schedule_polls(name, others_than=own if name is None else ())
                    log.info("poll (%s): %d calendar sync(s) queued", name or "push providers", queued)
                except Exception:  # noqa: BLE001
                    log.exception("poll timer error")

    threads = [threading.Thread(target=work, name=f"sync-worker-{n}", daemon=True) for n in range(count)]
    threads.append(threading.Thread(target=poll, name="sync-poll", daemon=True))
    for thread in threads:
        thread.start()
    # Notification delivery on threads of its own: a hung SMTP server cannot hold a sync worker.
    threads.extend(start_delivery_workers(bridge.database, bridge.config, stop))
    return threads
