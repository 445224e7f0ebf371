"""Two server processes on one database write the same calendar and lose nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.dav import event_ics, multistatus, report, sync_collection_body, sync_token
from tests.support.lockstep_server import LockstepServer

WRITERS_PER_NODE = 4
EVENTS_PER_WRITER = 15
ROUNDS = 12


def _session(auth: tuple[str, str]) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


def test_parallel_writers_on_two_nodes_lose_nothing(two_nodes: tuple[LockstepServer, LockstepServer]) -> None:
    node_a, node_b = two_nodes
    auth = node_a.add_tech()
    calendars = [f"{node.dav_url}{auth[0]}/bookings/" for node in (node_a, node_b)]

    # A reader on node B follows the calendar with sync tokens while writers run.
    seen: set[str] = set()
    stop = threading.Event()
    reader = _session(auth)

    def follow() -> None:
        initial = report(reader, calendars[1], sync_collection_body())
        seen.update(r.href for r in multistatus(initial.text))
        token = sync_token(initial.text)
        while True:
            finished = stop.is_set()
            response = report(reader, calendars[1], sync_collection_body(token))
            assert response.status_code == 207
            seen.update(r.href for r in multistatus(response.text) if "200" in r.status)
            token = sync_token(response.text)
            if finished:
                return

    def write(node: int, writer: int) -> list[int]:
        session = _session(auth)
        statuses = []
        for n in range(EVENTS_PER_WRITER):
            uid = f"n{node}-w{writer}-e{n}"
            statuses.append(session.put(f"{calendars[node]}{uid}.ics", data=event_ics(uid=uid),
                                        headers={"If-None-Match": "*"}).status_code)
        return statuses

    follower = threading.Thread(target=follow)
    follower.start()
    with ThreadPoolExecutor(max_workers=2 * WRITERS_PER_NODE) as pool:
        futures = [pool.submit(write, node, w) for node in (0, 1) for w in range(WRITERS_PER_NODE)]
        statuses = [s for f in futures for s in f.result()]
    stop.set()
    follower.join(timeout=60)
    assert statuses == [201] * len(statuses)

    expected = {f"/dav/{auth[0]}/bookings/n{node}-w{w}-e{n}.ics"
                for node in (0, 1) for w in range(WRITERS_PER_NODE) for n in range(EVENTS_PER_WRITER)}
    for calendar in calendars:
        listing = multistatus(report(_session(auth), calendar, sync_collection_body()).text)
        assert {r.href for r in listing} == expected
    # Every write reached the incremental follower: no revision was skipped.
    assert seen == expected


def test_concurrent_if_match_updates_exactly_one_wins(two_nodes: tuple[LockstepServer, LockstepServer]) -> None:
    node_a, node_b = two_nodes
    auth = node_a.add_tech()
    urls = [f"{node.dav_url}{auth[0]}/bookings/contested.ics" for node in (node_a, node_b)]
    etag = _session(auth).put(urls[0], data=event_ics(uid="contested", summary="v0")).headers["ETag"]
    for round_ in range(ROUNDS):
        barrier = threading.Barrier(2)

        def update(node: int) -> tuple[int, str]:
            session = _session(auth)
            barrier.wait()
            response = session.put(urls[node], data=event_ics(uid="contested", summary=f"r{round_}-n{node}"),
                                   headers={"If-Match": etag})
            return response.status_code, response.headers.get("ETag", "")

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(update, (0, 1)))
        winners = [(node, tag) for node, (status, tag) in enumerate(results) if status in (201, 204)]
        losers = [status for status, _ in results if status not in (201, 204)]
        assert len(winners) == 1 and losers == [412], results
        node, etag = winners[0]
        for url in urls:  # both nodes serve the winner's version at once
            assert f"SUMMARY:r{round_}-n{node}" in _session(auth).get(url).text
