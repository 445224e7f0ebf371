"""The fast free/busy path: integer-epoch merge, driver-tuple scans, direct VFREEBUSY text, and
bearer tokens checked in the request's own transaction (revocation still counts at once).

Each piece is checked against a plain reference: ``expand.merge`` on datetimes, ``strftime``,
the icalendar parser, and a scan of the inserted rows done in Python.
"""

from __future__ import annotations

import concurrent.futures
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone

import icalendar
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, text

from server.techs import revoke_token
from server.db import Database, plain_rows
from server.freebusy import index as busy_index
from server.freebusy import islands
from server.freebusy.epochs import ical_utc, merge_rows, rfc3339
from server.freebusy.expand import merge
from server.freebusy.policy import Policy
from server.freebusy.vfreebusy import MAX_LINE_OCTETS, fold, report_vfreebusy, vfreebusy
from server.models import BusyInterval, BusyIsland, DavCollection
from tests.support.lockstep_server import LockstepServer, migrated_database

UTC = timezone.utc
DAY = 86400
# The API accepts the years 1900 to 2999.
EPOCHS = st.integers(int(datetime(1900, 1, 1, tzinfo=UTC).timestamp()),
                     int(datetime(2999, 12, 31, tzinfo=UTC).timestamp()))
KINDS = st.sampled_from(["busy", "tentative"])


# --- formatting ----------------------------------------------------------------------------

@given(EPOCHS)
def test_epoch_formats_match_strftime(epoch: int) -> None:
    moment = datetime.fromtimestamp(epoch, UTC)
    assert rfc3339(epoch) == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ical_utc(epoch) == moment.strftime("%Y%m%dT%H%M%SZ")


# --- merging -------------------------------------------------------------------------------

QUARTER = 900


@st.composite
def window_and_rows(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int, str]]]:
    """A window and index rows as the scan returns them: each at most a day, overlapping the
    window, in start order. Times are quarter hours, so rows often touch, nest and share edges
    with each other and with the window."""
    start = QUARTER * draw(st.integers(0, 960))
    end = start + QUARTER * draw(st.integers(1, 480))
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        row_start = start + QUARTER * draw(st.integers(-95, (end - start) // QUARTER - 1))
        row_end = row_start + QUARTER * draw(st.integers(1, 96))
        if row_end > start:
            rows.append((row_start, row_end, draw(KINDS)))
    rows.sort(key=lambda row: row[0])  # the scan's ORDER BY start_utc: ties in any order
    return start, end, rows


def _reference(rows: list[tuple[int, int, str]], blocking: tuple[str, ...], start: int, end: int) -> tuple[list, list]:
    """Each row clipped and made a datetime, then ``expand.merge`` (the pre-epoch code path)."""
    def spans(chosen: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
        clipped = [(datetime.fromtimestamp(max(a, start), UTC), datetime.fromtimestamp(min(b, end), UTC))
                   for a, b, _ in chosen]
        return [(int(a.timestamp()), int(b.timestamp())) for a, b in merge(clipped)]
    return (spans([r for r in rows if r[2] in blocking]), spans([r for r in rows if r[2] not in blocking]))


@given(window_and_rows(), st.booleans())
def test_one_pass_merge_equals_clip_then_merge(case: tuple[int, int, list[tuple[int, int, str]]],
                                               tentative_blocks: bool) -> None:
    start, end, rows = case
    blocking = ("busy", "tentative") if tentative_blocks else ("busy",)
    assert merge_rows(rows, blocking, start, end) == _reference(rows, blocking, start, end)


# --- VFREEBUSY text ------------------------------------------------------------------------

SPANS = st.lists(st.tuples(EPOCHS, st.integers(60, 3 * DAY)).map(lambda p: (p[0], p[0] + p[1])), max_size=8)


@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True), SPANS, SPANS),
                min_size=1, max_size=3, unique_by=lambda t: t[0]),
       EPOCHS)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_vfreebusy_parses_back_and_lines_are_folded(techs: list, start: int) -> None:
    end = start + 30 * DAY
    text = vfreebusy(start, end, {name: (busy, tentative) for name, busy, tentative in techs}).decode()
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert all(len(line.encode()) <= MAX_LINE_OCTETS for line in text.split("\r\n"))
    calendar = icalendar.Calendar.from_ical(text)
    components = calendar.walk("VFREEBUSY")
    assert [str(c["X-LOCKSTEP-TECH"]) for c in components] == [name for name, _, _ in techs]
    for component, (_, busy, tentative) in zip(components, techs):
        assert component["UID"] and component["DTSTAMP"].dt.tzinfo is not None
        assert component["DTSTART"].dt == datetime.fromtimestamp(start, UTC)
        assert component["DTEND"].dt == datetime.fromtimestamp(end, UTC)
        assert _periods(component) == (
            [(a, b, "BUSY") for a, b in busy] + [(a, b, "BUSY-TENTATIVE") for a, b in tentative])


@given(SPANS, SPANS, EPOCHS)
def test_report_vfreebusy_is_one_component_in_time_order(busy: list, tentative: list, start: int) -> None:
    text = report_vfreebusy(start, start + DAY, busy, tentative)
    [component] = icalendar.Calendar.from_ical(text).walk("VFREEBUSY")
    assert _periods(component) == sorted([(a, b, "BUSY") for a, b in busy]
                                         + [(a, b, "BUSY-TENTATIVE") for a, b in tentative])


def _periods(component: icalendar.cal.Component) -> list[tuple[int, int, str]]:
    properties = component.get("FREEBUSY", [])
    properties = properties if isinstance(properties, list) else [properties]
    found = []
    for prop in properties:
        for period in prop.dt if isinstance(prop.dt, list) else [prop.dt]:
            a, b = period if isinstance(period, tuple) else (period.start, period.end)
            found.append((int(a.timestamp()), int(b.timestamp()), prop.params["FBTYPE"]))
    return found


def test_fold_never_splits_a_character() -> None:
    line = "X-LOCKSTEP-TECH:" + "é" * 60 + "x" * 7
    folded = fold(line)
    assert all(len(part.encode()) <= MAX_LINE_OCTETS for part in folded.split("\r\n"))
    assert folded.replace("\r\n ", "") == line


# --- the scan on a real database (both backends) --------------------------------------------

@pytest.fixture(scope="module")
def database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One database per module: the hypothesis tests clear what they wrote."""
    with migrated_database(backend, tmp_path_factory.mktemp("scan")) as migrated:
        yield migrated


ROWS = st.lists(st.tuples(st.sampled_from(["ann", "bob", "cy"]), st.sampled_from([1, 2]),
                          st.sampled_from(["a.ics", "b.ics", "c.ics"]), st.integers(0, 576).map(QUARTER.__mul__),
                          st.integers(1, 96).map(QUARTER.__mul__), KINDS), max_size=40)


@given(rows=ROWS, window=st.tuples(st.integers(96, 480).map(QUARTER.__mul__), st.integers(1, 288).map(QUARTER.__mul__)),
       ignore=st.sampled_from([None, "a.ics"]), collection=st.sampled_from([None, 2]),
       names=st.sampled_from([["ann"], ["ann", "bob", "cy"], ["bob", "cy"]]), tentative_blocks=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_scan_matches_a_python_scan_of_the_rows(
    database: Database, rows: list, window: tuple[int, int], ignore: str | None, collection: int | None,
    names: list[str], tentative_blocks: bool,
) -> None:
    start, end = window[0], window[0] + window[1]
    with database.write() as session:
        session.execute(delete(BusyInterval))
        if rows:
            session.execute(insert(BusyInterval), [
                {"tech": tech, "collection_id": cid, "href": href, "start_utc": a, "end_utc": a + length,
                 "kind": kind} for tech, cid, href, a, length, kind in rows])
        islands.rebuild(session, ["ann", "bob", "cy"])
    policies = {name: Policy.simple("UTC", tentative_blocks=tentative_blocks and name != "bob") for name in names}
    with database.read() as session:
        got = busy_index.busy_epochs_for_many(session, policies, start, end, ignore_href=ignore,
                                              collection_id=collection)
    for name in names:
        mine = sorted(((a, a + length, kind) for tech, cid, href, a, length, kind in rows
                       if tech == name and a < end and a + length > start and href != ignore
                       and collection in (None, cid)), key=lambda row: row[0])
        blocking = ("busy", "tentative") if policies[name].tentative_blocks else ("busy",)
        assert got[name] == _reference(mine, blocking, start, end), name


EVENTS = st.lists(st.tuples(st.integers(0, 8 * 96).map(QUARTER.__mul__), st.integers(1, 120).map(QUARTER.__mul__),
                            st.booleans(), st.sampled_from([None, "WEEKLY;COUNT=4", "DAILY;COUNT=3"])), max_size=3)
WRITES = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "delete", "forget"]), st.sampled_from([1, 2]),
                            st.sampled_from(["a.ics", "b.ics"]), EVENTS), min_size=1, max_size=8)


def _calendar(day0: int, events: list[tuple[int, int, bool, str | None]]) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//lockstep tests//EN"]
    for n, (offset, length, tentative, rule) in enumerate(events):
        lines += ["BEGIN:VEVENT", f"UID:e{n}", f"DTSTART:{ical_utc(day0 + offset)}",
                  f"DTEND:{ical_utc(day0 + offset + length)}", *([f"RRULE:FREQ={rule}"] if rule else []),
                  *(["STATUS:TENTATIVE"] if tentative else []), "END:VEVENT"]
    return "\r\n".join([*lines, "END:VCALENDAR", ""])


@given(writes=WRITES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_islands_stay_the_merge_of_the_rows_after_every_write(
    database: Database, writes: list[tuple[str, int, str, list[tuple[int, int, bool, str | None]]]],
) -> None:
    """Each transaction rebuilds only the days its writes touched; the pieces must equal the ones
    built from all of the tech's rows, whatever was put, replaced, deleted or forgotten before.
    Events cross midnights, repeat on days far apart, and mix busy with tentative."""
    today = datetime.now(UTC).date()
    day0 = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp())
    collections = {cid: DavCollection(id=cid, path=f"ann/cal{cid}", props='{"tag": "VCALENDAR"}') for cid in (1, 2)}
    policy = Policy.simple("UTC")
    with database.write(["ann"]) as session:
        session.execute(delete(BusyInterval))
        islands.rebuild(session, ["ann"])
    for action, cid, href, events in writes:
        with database.write(["ann"]) as session:
            if action == "forget":
                busy_index.forget_collection(session, cid)
            else:
                text_ = _calendar(day0, events) if action == "put" else None
                busy_index.reindex_item(session, collections[cid], href, text_, policy)
            # Asked inside the writing transaction, the answer already includes its writes.
            window = (day0 - DAY, day0 + 40 * DAY)
            rows_now = session.execute(select(BusyInterval.start_utc, BusyInterval.end_utc, BusyInterval.kind)
                                       .where(BusyInterval.tech == "ann", BusyInterval.end_utc > window[0],
                                              BusyInterval.start_utc < window[1])
                                       .order_by(BusyInterval.start_utc)).all()
            assert busy_index.busy_epochs_for_many(session, {"ann": policy}, *window)["ann"] == \
                merge_rows(rows_now, ("busy",), *window)
        with database.read() as session:
            stored = session.execute(select(BusyIsland.start_utc, BusyIsland.end_utc, BusyIsland.kind)
                                     .where(BusyIsland.tech == "ann")).all()
            rows = session.execute(select(BusyInterval.start_utc, BusyInterval.end_utc, BusyInterval.kind)
                                   .where(BusyInterval.tech == "ann")).all()
        assert sorted(stored) == sorted(islands.pieces_of(rows, -(1 << 62), 1 << 62)), action


def test_read_many_gives_each_query_its_rows_in_one_snapshot(database: Database) -> None:
    """The same rows as reading each query in a session (PostgreSQL: one pipeline of prepared
    statements; a name with quotes and SQL in it is only ever a parameter)."""
    names = ["ann", "o'brien; DROP TABLE busy_intervals --", "cy"]
    with database.write() as session:
        session.execute(delete(BusyInterval))
        session.execute(insert(BusyInterval), [
            {"tech": name, "collection_id": 1, "href": f"{n}.ics", "start_utc": 1000 * n, "end_utc": 1000 * n + 600,
             "kind": "busy"} for n, name in enumerate(names)])
        islands.rebuild(session, names)
    queries = [busy_index.range_scan([name], 0, 10_000) for name in names] + [busy_index.range_scan(names, 0, 10_000)]
    with database.read() as session:
        expected = [plain_rows(session, statement, params) for statement, params in queries]
    assert database.read_many(queries) == expected
    assert [len(rows) for rows in expected] == [1, 1, 1, 3]


# Only PostgreSQL connections can be terminated from outside, so this case runs there alone.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_read_many_outlives_dropped_connections(database: Database) -> None:
    """Every pooled connection terminated by the server (a restart, a failover): the next read
    answers all the same, on fresh connections."""
    name = "readmany-" + secrets.token_hex(4)
    reader = Database(f"{database.url}&application_name={name}")
    query = [busy_index.range_scan(["ann"], 0, 10_000)]
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # several connections in the pool
            first = list(pool.map(lambda _: reader.read_many(query), range(8)))[0]
        with database.write() as session:
            killed = session.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name}).scalar()
        assert killed >= 1
        assert reader.read_many(query) == first
    finally:
        reader.dispose()


# --- bearer tokens -------------------------------------------------------------------------

def test_revoked_token_fails_at_once_on_every_node(two_nodes: tuple[LockstepServer, LockstepServer]) -> None:
    """Both nodes have verified the token (argon2 result remembered) before it is revoked."""
    first, second = two_nodes
    user, _ = first.add_tech()
    name, secret = first.create_token(scope="freebusy")
    window = {"tech": user, "start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}

    def status(node: LockstepServer, path: str, bearer: str, **extra: str) -> int:
        return requests.get(f"{node.url}/api/v1/{path}", params={**window, **extra},
                            headers={"Authorization": f"Bearer {bearer}"}, timeout=30).status_code

    for node in two_nodes:
        assert status(node, "freebusy", f"{name}.{secret}") == 200
        assert status(node, "availability", f"{name}.{secret}", duration="60") == 200
    revoke_token(first.database, name)
    for node in two_nodes:
        assert status(node, "freebusy", f"{name}.{secret}") == 401
        assert status(node, "availability", f"{name}.{secret}", duration="60") == 401
        assert status(node, "techs", f"{name}.{secret}") == 401

    # The same name issued again: only the new secret works, on both nodes.
    fresh = first.create_token(name=name, scope="freebusy")[1]
    for node in two_nodes:
        assert status(node, "freebusy", f"{name}.{fresh}") == 200
        assert status(node, "freebusy", f"{name}.{secret}") == 401
