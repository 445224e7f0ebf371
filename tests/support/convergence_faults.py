"""The faults a convergence scenario injects between operations, and how they are cleared.

Provider faults are bounded (a few failing calls each), as real outages end;
what must hold is that Lockstep converges once they do. Faults of the far end
(errors, latency, a lost sync cursor, push misdelivery) go through the
emulator's control API behind one face per provider (:class:`EmulatorFaults`).
In a world of several providers each such fault, a cursor's expiry and a
revoked grant first draw which provider they hit; a killed worker slows every
emulator; clearing clears them all and reconnects every revoked grant.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from tests.support.convergence_ops import Ctx
from tests.support.convergence_world import SEPARATOR


class EmulatorFaults:
    """What a fault asks of the provider's emulator; one face per provider, so the faults
    themselves are written once."""

    provider = ""

    def rate_limit(self, count: int) -> None:
        raise NotImplementedError

    def server_error(self, count: int, status: int) -> None:
        raise NotImplementedError

    def slow(self, seconds: float, count: int) -> None:
        raise NotImplementedError

    def cursor_gone(self, email: str) -> None:
        """The next incremental listing answers 410 (full listing required)."""
        raise NotImplementedError

    def misdeliver(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """No more injected errors or latency; push delivered faithfully (held messages sent)."""
        raise NotImplementedError


class GoogleFaults(EmulatorFaults):
    provider = "google"

    def __init__(self, google: Any) -> None:
        self.google = google

    def rate_limit(self, count: int) -> None:
        self.google.rate_limit(count, retry_after=1)

    def server_error(self, count: int, status: int) -> None:
        self.google.server_error(count, status=status)

    def slow(self, seconds: float, count: int) -> None:
        self.google.add_latency(seconds, count, path=r"^/calendar/")

    def cursor_gone(self, email: str) -> None:
        self.google.fail_sync_tokens(1)  # 410 fullSyncRequired

    def misdeliver(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        self.google.misdeliver_notifications(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear(self) -> None:
        self.google.clear_faults()
        self.google.clear_notification_faults()


class GraphFaults(EmulatorFaults):
    provider = "microsoft"

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def rate_limit(self, count: int) -> None:
        self.graph.rate_limit(count, retry_after=1)  # 429 ApplicationThrottled

    def server_error(self, count: int, status: int) -> None:
        self.graph.server_error(count, status=status)

    def slow(self, seconds: float, count: int) -> None:
        self.graph.add_latency(seconds, count, path=r"^/v1\.0/")

    def cursor_gone(self, email: str) -> None:
        self.graph.fail_delta_tokens(1)  # 410 syncStateNotFound

    def misdeliver(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        self.graph.misdeliver_notifications(drop=drop, duplicate=duplicate, reorder=reorder)

    def clear(self) -> None:
        self.graph.clear_faults()
        self.graph.clear_notification_faults()


EMULATORS: dict[str, Callable[[Any], EmulatorFaults]] = {
    "google": lambda account: GoogleFaults(account.sandbox),
    "microsoft": lambda account: GraphFaults(account.graph),
}


def emulators(ctx: Ctx) -> list[EmulatorFaults]:
    """The fault faces of the world's providers (none for a far end without one: remote CalDAV)."""
    return [EMULATORS[a.provider](a) for a in ctx.world.accounts if a.provider in EMULATORS]


def _emulator(ctx: Ctx) -> EmulatorFaults:
    """The emulator a fault hits: drawn from the seed when the world has several."""
    faces = emulators(ctx)
    assert faces, f"no emulator faults for {ctx.world.provider}"
    face = ctx.pick(faces)
    ctx.model.hit = face.provider
    return face


def rate_limited(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _emulator(ctx).rate_limit(count)
    ctx.note(f"fault: next {count} calendar call(s) answer 429 Retry-After: 1")


def server_errors(ctx: Ctx) -> None:
    count, status = ctx.rng.randint(1, 3), ctx.rng.choice((500, 502, 503))
    _emulator(ctx).server_error(count, status)
    ctx.note(f"fault: next {count} calendar call(s) answer {status}")


def slow(ctx: Ctx) -> None:
    seconds, count = round(ctx.rng.uniform(0.3, 2.0), 2), ctx.rng.randint(1, 4)
    _emulator(ctx).slow(seconds, count)
    ctx.note(f"fault: next {count} calendar call(s) take {seconds}s longer")


def expired_cursor(ctx: Ctx) -> None:
    account = ctx.remote()
    account.expire_cursor(ctx.tech.user)
    ctx.note(f"fault: every {account.provider} sync cursor issued so far expires")


def sync_token_gone(ctx: Ctx) -> None:
    _emulator(ctx).cursor_gone(ctx.tech.email)
    ctx.note("fault: next incremental listing answers 410 (sync token / delta link gone)")


def push_dropped(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _emulator(ctx).misdeliver(drop=count)
    ctx.note(f"fault: next {count} push notification(s) dropped")


def push_duplicated(ctx: Ctx) -> None:
    count = ctx.rng.randint(1, 3)
    _emulator(ctx).misdeliver(duplicate=count)
    ctx.note(f"fault: next {count} push notification(s) duplicated")


def push_reordered(ctx: Ctx) -> None:
    count = ctx.rng.randint(2, 4)
    _emulator(ctx).misdeliver(reorder=count)
    ctx.note(f"fault: next {count} push notifications held back and sent newest first")


def grant_revoked(ctx: Ctx) -> None:
    account = ctx.remote()
    account.revoke(ctx.tech.user)
    ctx.model.revoked.add((account.provider, ctx.tech.user))
    ctx.note(f"fault: the tech revokes Lockstep's {account.provider} access (reconnected before quiescence)")


def worker_killed(ctx: Ctx) -> None:
    """SIGKILL the worker inside a job (a sync is queued and provider calls slowed to make that so),
    then start a new one: the dead worker's leased jobs are taken over once the lease runs out."""
    from server.sync_admin import sync_now
    from server.techs import AdminError

    for face in emulators(ctx):
        face.slow(1.0, 2)
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
    for face in emulators(ctx):
        face.clear()
    ctx.world.ensure_worker()
    for provider, user in sorted(ctx.model.revoked):  # the connection row is re-used: order is free
        ctx.world.side(provider).reconnect(ctx.world.server, user)
        ctx.note(f"quiesce: {user} reconnected to {provider}")
    ctx.model.revoked.clear()


Fault = Callable[[Ctx], None]


EMULATOR_ONLY = (rate_limited, server_errors, slow, sync_token_gone, push_dropped, push_duplicated, push_reordered)


def faults_for(backend: str, provider: str = "google") -> list[tuple[Fault, int]]:
    """Weighted faults; emulator faults where every far end is an emulator (Google, Graph); a lost
    database connection only where it can be provoked (PostgreSQL). ``provider`` is a world kind."""
    chosen: list[tuple[Fault, int]] = [
        (rate_limited, 3), (server_errors, 3), (slow, 2), (expired_cursor, 1), (sync_token_gone, 1),
        (push_dropped, 2), (push_duplicated, 2), (push_reordered, 2), (grant_revoked, 1), (worker_killed, 1),
    ]
    if not all(name in EMULATORS for name in provider.split(SEPARATOR)):
        chosen = [(fault, weight) for fault, weight in chosen if fault not in EMULATOR_ONLY]
    if backend == "postgresql":
        chosen.append((database_dropped, 2))
    return chosen
