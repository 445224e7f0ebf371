"""Twenty concurrent requests for one slot, spread over two server processes: exactly one wins."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.lockstep_server import LockstepServer

REQUESTS = 20


def test_one_slot_twenty_requests_one_booking(two_nodes: tuple[LockstepServer, LockstepServer]) -> None:
    nodes = two_nodes
    user, password = nodes[0].add_tech()
    name, secret = nodes[0].create_token(scope="bookings")
    barrier = threading.Barrier(REQUESTS)

    def book(n: int) -> requests.Response:
        # Overlapping but different intervals, so no two requests are identical.
        start_minute = 10 + (n % 5) * 5
        body = {"tech": user, "start": f"2026-12-03T17:{start_minute:02d}:00Z",
                "end": f"2026-12-03T18:{start_minute:02d}:00Z", "summary": f"Request {n}"}
        barrier.wait()
        return requests.post(f"{nodes[n % 2].url}/api/v1/bookings", json=body,
                             headers={"Authorization": f"Bearer {name}.{secret}"}, timeout=60)

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        responses = list(pool.map(book, range(REQUESTS)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (REQUESTS - 1), [r.text for r in responses]
    winner = next(r.json() for r in responses if r.status_code == 201)
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.json()["conflicts"], loser.text

    listing = requests.request("PROPFIND", f"{nodes[1].dav_url}{user}/bookings/", auth=(user, password),
                               headers={"Depth": "1"})
    assert listing.text.count(".ics</href>") == 1
    assert winner["uid"] in listing.text
