"""The faults a convergence scenario injects between operations, and how they are cleared.

Provider faults are bounded (a few failing calls each), as real outages end;
what must hold is that Lockstep converges once they do. Google-only faults
(push delivery) go through the emulator's control API.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from tests.support.convergence_ops import Ctx


def _google(ctx: Ctx) -> Any:
    return ctx.world.account.sandbox  # type: ignore[attr-defined]


def rate_limited(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _google(ctx).rate_limit(count, retry_after=1)
    ctx.note(f"fault: next {count} calendar call(s) answer 429 Retry-After: 1")


def server_errors(ctx: Ctx) -> None:
    count, status = ctx.rng.randint(1, 3), ctx.rng.choice((500, 502, 503))
    _google(ctx).server_error(count, status=status)
    ctx.note(f"fault: next {count} calendar call(s) answer {status}")


def slow(ctx: Ctx) -> None:
    seconds, count = round(ctx.rng.uniform(0.3, 2.0), 2), ctx.rng.randint(1, 4)
    _google(ctx).add_latency(seconds, count, path=r"^/calendar/")
    ctx.note(f"fault: next {count} calendar call(s) take {seconds}s longer")


def expired_cursor(ctx: Ctx) -> None:
    ctx.world.account.expire_cursor(ctx.tech.user)
    ctx.note("fault: every sync cursor issued so far expires")


def sync_token_gone(ctx: Ctx) -> None:
    _google(ctx).fail_sync_tokens(1)
    ctx.note("fault: next incremental listing answers 410 fullSyncRequired")


def push_dropped(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _google(ctx).misdeliver_notifications(drop=count)
    ctx.note(f"fault: next {count} push notification(s) dropped")


def push_duplicated(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _google(ctx).misdeliver_notifications(duplicate=count)
    ctx.note(f"fault: next {count} push notification(s) duplicated")


def push_reordered(ctx: Ctx) -> None:
    count = ctx.rng.randint(2, 4)
    _google(ctx).misdeliver_notifications(reorder=count)
    ctx.note(f"fault: next {count} push notifications held back and sent newest first")


def grant_revoked(ctx: Ctx) -> None:
    ctx.world.account.revoke(ctx.tech.user)
    ctx.model.revoked.add(ctx.tech.user)
    ctx.note("fault: the tech revokes Lockstep's access (reconnected before quiescence)")


def worker_killed(ctx: Ctx) -> None:
    """SIGKILL the worker inside a job (a sync is queued and provider calls slowed to make that so),
    then start a new one: the dead worker's leased jobs are taken over once the lease runs out."""
    from server.sync_admin import sync_now
    from server.techs import AdminError

    if ctx.world.account.provider == "google":
        _google(ctx).add_latency(1.0, 2, path=r"^/calendar/")
    with contextlib.suppress(AdminError):  # no calendar yet: the kill still hits whatever runs
        sync_now(ctx.world.server.database, ctx.tech.user)
    deadline = time.monotonic() + 3 + ctx.rng.uniform(0.1, 1.0)
    while _running_jobs(ctx) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    running = _running_jobs(ctx)
    ctx.world.kill_worker()
    ctx.note(f"fault: worker SIGKILLed ({running} job(s) running) and restarted")
    ctx.world.ensure_worker()


def _running_jobs(ctx: Ctx) -> int:
    from server import jobs

    return jobs.pending_counts(ctx.world.server.database).get(jobs.RUNNING, 0)


def database_dropped(ctx: Ctx) -> None:
    killed = ctx.world.drop_database_connections()
    ctx.note(f"fault: {killed} PostgreSQL connection(s) of the server and worker terminated")


def clear(ctx: Ctx) -> None:
    """End every fault: no more injected errors, push delivered faithfully, access restored."""
    if ctx.world.account.provider == "google":
        google = _google(ctx)
        google.clear_faults()
        google.clear_notification_faults()
    ctx.world.ensure_worker()
    for user in sorted(ctx.model.revoked):
        ctx.world.account.reconnect(ctx.world.server, user)
        ctx.note(f"quiesce: {user} reconnected")
    ctx.model.revoked.clear()


Fault = Callable[[Ctx], None]


GOOGLE_ONLY = (rate_limited, server_errors, slow, sync_token_gone, push_dropped, push_duplicated, push_reordered)


def faults_for(backend: str, provider: str = "google") -> list[tuple[Fault, int]]:
    """Weighted faults; emulator faults for the emulator's provider; a lost database connection
    only where it can be provoked (PostgreSQL)."""
    chosen: list[tuple[Fault, int]] = [
        (rate_limited, 3), (server_errors, 3), (slow, 2), (expired_cursor, 1), (sync_token_gone, 1),
        (push_dropped, 2), (push_duplicated, 2), (push_reordered, 2), (grant_revoked, 1), (worker_killed, 1),
    ]
    if provider != "google":
        chosen = [(fault, weight) for fault, weight in chosen if fault not in GOOGLE_ONLY]
    if backend == "postgresql":
        chosen.append((database_dropped, 2))
    return chosen
