"""The seeded convergence scenario: operations and faults interleaved, quiescence, invariants.

    with open_world(tmp, "sqlite") as world:
        result = run_scenario(world, seed=7)   # raises ScenarioFailed naming the seed

A seed fixes every choice (``random.Random(seed)``); the timing of the
system under test is not fixed, which is what the soak run explores. Replay
a failure with ``bench/soak.py --seed S --scenarios 1``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import icalendar
from sqlalchemy import func, select

from server import jobs, techs
from server.models import Conflict, Job
from tests.support.convergence_faults import clear, faults_for
from tests.support.convergence_invariants import Item, Observed, RemoteSide, broken
from tests.support.convergence_observers import OBSERVERS, observer_for
from tests.support.convergence_ops import Ctx, Model
from tests.support.convergence_shapes import operations_for, shapes_for
from tests.support.convergence_world import DUAL, DUAL_OUTLOOK_FIRST, World
from tests.support.dav import multistatus, report, tag

UTC = timezone.utc
# World kinds the runner can read back: each provider alone, and one tech connected to both at once
# (in either order: the first connected holds the bookings).
OBSERVABLE = (*OBSERVERS, DUAL, DUAL_OUTLOOK_FIRST)
QUIESCENCE_TIMEOUT = 120.0
FAULT_SHARE = 0.3
CALENDAR_QUERY = ('<?xml version="1.0"?><c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
                  '<d:prop><d:getetag/><c:calendar-data/></d:prop>'
                  '<c:filter><c:comp-filter name="VCALENDAR"/></c:filter></c:calendar-query>')


class ScenarioFailed(AssertionError):
    def __init__(self, seed: int, what: str, log: list[str]) -> None:
        steps = "\n".join(log[-80:])
        super().__init__(f"seed {seed}: {what}\nreplay: bench/soak.py --seed {seed} --scenarios 1\nsteps:\n{steps}")
        self.seed = seed


@dataclass
class Result:
    seed: int
    steps: int
    seconds: float
    quiesce_seconds: float
    bookings: int = 0  # live at the end: what the checks had to find on every side
    items: int = 0
    conflicts: int = 0
    faults: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()  # provider-only shapes made (series, all-day, tentative, ...)
    fault_sides: tuple[str, ...] = ()  # with several providers: which one each fault hit ("slow@google")


def run_scenario(world: World, seed: int, steps: int | None = None) -> Result:
    """One scenario on a fresh tech; the tech is removed afterwards whatever happens."""
    rng = random.Random(seed)
    began = time.monotonic()
    model = Model()
    first_job = _last_job_id(world)
    tech = world.add_tech()
    ctx = Ctx(world, tech, rng, model)
    ctx.note(f"seed {seed}: tech {tech.user} connected to {world.provider} on {world.backend}")
    try:
        _wait_for_mirrors(ctx)
        operations, faults = operations_for(world.provider), faults_for(world.backend, world.provider)
        shapes = {shape for shape, _ in shapes_for(world.provider)}
        count = steps if steps is not None else rng.randint(8, 16)
        for _ in range(count):
            if rng.random() < FAULT_SHARE:
                fault = rng.choices([f for f, _ in faults], [w for _, w in faults])[0]
                model.faults_used.add(fault.__name__)
                model.hit = ""
                fault(ctx)
                if len(world.accounts) > 1:
                    model.fault_sides.add(f"{fault.__name__}@{model.hit}" if model.hit else fault.__name__)
            else:
                operation = rng.choices([o for o, _ in operations], [w for _, w in operations])[0]
                if operation in shapes:
                    model.shapes_used.add(operation.__name__)
                operation(ctx)
            time.sleep(rng.uniform(0, 0.4))
        settled = time.monotonic()
        seen = quiesce(ctx, first_job)
        problems = broken(seen, model)
        if problems:
            raise ScenarioFailed(seed, "invariants broken:\n  " + "\n  ".join(problems), model.log)
        return Result(seed, count, time.monotonic() - began, time.monotonic() - settled, len(model.bookings),
                      len(seen.items), len(seen.conflicts), tuple(sorted(model.faults_used)),
                      tuple(sorted(model.shapes_used)), tuple(sorted(model.fault_sides)))
    except ScenarioFailed:
        raise
    except Exception as exc:
        raise ScenarioFailed(seed, f"{type(exc).__name__}: {exc}", model.log) from exc
    finally:
        _forget(world, ctx)


def _wait_for_mirrors(ctx: Ctx) -> None:
    deadline = time.monotonic() + 30
    for account in ctx.world.accounts:
        url = ctx.world.mirror_url(ctx.tech, account)
        while ctx.tech.dav.request("PROPFIND", url, headers={"Depth": "0"}).status_code != 207:
            if time.monotonic() > deadline:
                raise AssertionError(f"the {account.provider} mirror calendar did not appear after connecting")
            time.sleep(0.2)


def _forget(world: World, ctx: Ctx) -> None:
    """Clear faults and remove the tech, so the next scenario starts clean."""
    try:
        clear(ctx)
        techs.remove_tech(world.server.database, ctx.tech.user)
    except Exception:  # noqa: BLE001 - clean-up must not hide the scenario's own outcome
        pass
    world.techs.remove(ctx.tech)


# -- quiescence ---------------------------------------------------------------------------------
def quiesce(ctx: Ctx, first_job: int) -> Observed:
    """Faults cleared, access restored, a sync asked for; then wait until no job is due or
    running and two snapshots a moment apart are identical. Returns the last observation."""
    clear(ctx)
    world = ctx.world
    world.server.cli("sync", "now", ctx.tech.user)
    ctx.note("quiesce: faults cleared, sync now")
    deadline = time.monotonic() + QUIESCENCE_TIMEOUT
    previous: Any = None
    while True:
        seen = observe(ctx, first_job)
        snapshot = _snapshot(seen)
        busy = _busy_jobs(world)
        if not busy and snapshot == previous:
            seen.jobs = _settled_jobs(world, first_job)
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no quiescence within {QUIESCENCE_TIMEOUT:.0f}s: jobs still due or running "
                                 f"{busy}, or sides still changing")
        previous = None if busy else snapshot
        time.sleep(0.7)


def _snapshot(seen: Observed) -> Any:
    return (sorted((i.calendar, i.href, i.etag) for i in seen.items),
            [sorted((e.id, e.version) for e in side.items) for side in seen.sides], seen.api_busy)


def _busy_jobs(world: World) -> list[str]:
    """Jobs due or running now, or waiting out a backoff (scheduled watch renewals excepted)."""
    soon = datetime.now(UTC) + timedelta(minutes=10)
    with world.server.database.read() as session:
        rows = session.execute(select(Job.id, Job.kind, Job.state, Job.run_at).where(
            Job.state.in_([jobs.READY, jobs.RUNNING]))).all()
    return [f"{i} {kind} {state}" for i, kind, state, run_at in rows
            if not (kind == "renew_watch" and state == jobs.READY and _aware(run_at) > soon)]


def _settled_jobs(world: World, first_job: int, wait: float = 10.0) -> list[dict[str, Any]]:
    """The scenario's jobs once none is in flight. The poll timer keeps starting short syncs, so a
    read can catch one running: a stuck job is one still there after ``wait`` seconds of reads."""
    deadline = time.monotonic() + wait
    while True:
        found = _jobs(world, first_job)
        if time.monotonic() > deadline or not any(
                job["state"] in (jobs.READY, jobs.RUNNING) and not job["future_watch"] for job in found):
            return found
        time.sleep(0.2)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _last_job_id(world: World) -> int:
    with world.server.database.read() as session:
        return int(session.scalar(select(func.max(Job.id))) or 0)


# -- observation ----------------------------------------------------------------------------------
def observe(ctx: Ctx, first_job: int) -> Observed:
    world, tech = ctx.world, ctx.tech
    start, end = world.window
    sides = []
    for account in world.accounts:
        observer = observer_for(account)
        sides.append(RemoteSide(account.provider, account.mirror_slug, observer.items(tech.email),
                                observer.specs(tech.email, start, end), bookings=account is world.account))
    return Observed(
        tech=tech.user, email=tech.email, window=world.window, items=_dav_items(ctx), sides=sides,
        api_busy=_api_busy(ctx, start, end), conflicts=_conflicts(ctx), jobs=_jobs(world, first_job))


def _dav_items(ctx: Ctx) -> list[Item]:
    home = f"{ctx.world.server.dav_url}{ctx.tech.user}/"
    listing = ctx.tech.dav.request("PROPFIND", home, headers={"Depth": "1"})
    assert listing.status_code == 207, listing.text
    out = []
    for calendar in sorted(r.href for r in multistatus(listing.text) if r.href.rstrip("/") != home.split(
            ctx.world.server.url, 1)[1].rstrip("/")):
        answer = report(ctx.tech.dav, ctx.world.server.url + calendar, CALENDAR_QUERY)
        assert answer.status_code == 207, answer.text
        path = calendar.strip("/").split("/", 1)[1]  # "<tech>/<slug>" without the /dav prefix
        for response in multistatus(answer.text):
            data = response.props.get(tag("c", "calendar-data"))
            if data is None or not data.text:
                continue
            uid = str(next(iter(icalendar.Calendar.from_ical(data.text).walk("VEVENT")))["UID"])
            out.append(Item(path, response.href.rsplit("/", 1)[1], uid,
                            response.props[tag("d", "getetag")].text or "", data.text))
    return sorted(out, key=lambda i: (i.calendar, i.href))


def _api_busy(ctx: Ctx, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    answer = ctx.world.api.get("/freebusy", tech=ctx.tech.user, start=_z(start), end=_z(end))
    assert answer.status_code == 200, answer.text
    return [(_at(b["start"]), _at(b["end"])) for b in answer.json()["techs"][ctx.tech.user]["busy"]]


def _conflicts(ctx: Ctx) -> list[tuple[str, str]]:
    with ctx.world.server.database.read() as session:
        return [(uid, ref) for uid, ref in session.execute(
            select(Conflict.booking_uid, Conflict.other_ref).where(Conflict.tech == ctx.tech.user))]


def _jobs(world: World, first_job: int) -> list[dict[str, Any]]:
    soon = datetime.now(UTC) + timedelta(minutes=10)
    with world.server.database.read() as session:
        rows = session.execute(select(Job.id, Job.kind, Job.state, Job.attempts, Job.last_error, Job.run_at)
                               .where(Job.id > first_job).order_by(Job.id)).all()
    return [{"id": i, "kind": kind, "state": state, "attempts": attempts, "last_error": error or "",
             "future_watch": kind == "renew_watch" and state == jobs.READY and _aware(run_at) > soon}
            for i, kind, state, attempts, error, run_at in rows]


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


__all__ = ["OBSERVABLE", "Result", "ScenarioFailed", "quiesce", "run_scenario"]
