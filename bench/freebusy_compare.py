#!/usr/bin/env python3
"""Free/busy side by side: two versions of Lockstep's code on the same kept data, same moment.

On a shared machine, latency moves with other people's load; comparing two
versions in one run (requests interleaved) and reading each server's own CPU
time per request is what shows a change. Loading 5,000 events takes minutes,
so this reuses the data that ``bench/freebusy.py --workdir DIR`` keeps
(``DIR/lockstep-sqlite``, or ``DIR/lockstep-postgresql`` naming its kept schema;
windows start today, so use it the same day).

    .venv/bin/python bench/freebusy.py --backends sqlite --no-stock --workdir /tmp/fbw
    mkdir -p /tmp/before && git archive <commit> server | tar -x -C /tmp/before
    cp server/migrations/versions/*.py /tmp/before/server/migrations/versions/  # if the schema moved on
    .venv/bin/python bench/freebusy_compare.py /tmp/fbw/lockstep-sqlite before=/tmp/before after=.

Each tree is started as ``lockstep serve --no-workers`` with its own ``server``
package on PYTHONPATH; the answers of every version must be the same (parsed:
JSON, or the FREEBUSY periods), else the comparison is void.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.freebusy import BIG_PASSWORD, BIG_TECH, CALENDAR, cpu_seconds, freebusy_query, rfc3339  # noqa: E402
from tests.support.lockstep_server import free_port  # noqa: E402

UTC = timezone.utc
Op = Callable[[], requests.Response]


@contextlib.contextmanager
def serve(tree: Path, data: Path, log: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of ``lockstep serve`` run from ``tree`` on ``data``."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()), LOCKSTEP_DATABASE_URL=database_url(data))
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "--data", str(data), "serve", "--port",
                                    str(port), "--no-workers"], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url + "/healthz", timeout=2).ok:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"{tree}: lockstep serve exited (see {log})")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def database_url(data: Path) -> str:
    """The kept data's database: the PostgreSQL schema named in ``DATA/database_url``, else SQLite."""
    kept = data / "database_url"
    return kept.read_text().strip() if kept.exists() else f"sqlite:///{data / 'lockstep.db'}"


def operations(url: str, bearer: str, small_techs: list[str]) -> dict[str, Op]:
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    api = requests.Session()
    api.headers.update({"Authorization": f"Bearer {bearer}", "Accept": "application/json"})
    dav = requests.Session()
    dav.auth = (BIG_TECH, BIG_PASSWORD)
    ops: dict[str, Op] = {}
    for days in (30, 365):
        start, end = day0, day0 + timedelta(days=days)
        window = [("start", rfc3339(start)), ("end", rfc3339(end))]
        ops[f"api_{days}"] = lambda w=window: api.get(f"{url}/api/v1/freebusy", params=[("tech", BIG_TECH), *w])
        body = freebusy_query(start, end)
        ops[f"report_{days}"] = lambda b=body: dav.request(
            "REPORT", f"{url}/dav/{BIG_TECH}/{CALENDAR}/", data=b,
            headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"})
    month = [("start", rfc3339(day0)), ("end", rfc3339(day0 + timedelta(days=30)))]
    if small_techs:
        many = [("tech", t) for t in small_techs] + month
        ops["api_many_30"] = lambda: api.get(f"{url}/api/v1/freebusy", params=many)
    ops["availability_30"] = lambda: api.get(f"{url}/api/v1/availability",
                                             params=[("tech", BIG_TECH), *month, ("duration", "60")])
    return ops


def meaning(body: bytes) -> object:
    """What an answer says, whatever its byte layout (key order, folding, UID, DTSTAMP)."""
    text = body.decode()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    unfolded = text.replace("\r\n ", "")
    return sorted(re.findall(r"^(?:FREEBUSY[^:]*:.*|DTSTART:.*|DTEND:.*)$", unfolded, re.M))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path,
                        help="a kept lockstep-sqlite or lockstep-postgresql data dir of bench/freebusy.py --workdir")
    parser.add_argument("trees", nargs="+", help="NAME=PATH: a directory holding a server/ package")
    parser.add_argument("--repeat", type=int, default=50, help="timed requests per operation and tree")
    parser.add_argument("--cpu-repeat", type=int, default=100, help="requests per operation and tree for CPU")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    trees = {name: Path(path) for name, _, path in (t.partition("=") for t in args.trees)}

    from server import techs as tech_admin
    from server.db import Database
    from server.models import Tech
    from sqlalchemy import select

    database = Database(database_url(args.data))
    with database.read() as session:
        small = list(session.scalars(select(Tech.username).where(Tech.username != BIG_TECH).order_by(Tech.username)))
    credential = tech_admin.create_token(database, f"cmp{os.getpid()}", "freebusy")
    bearer = f"{credential.name}.{credential.secret}"
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(serve(tree, args.data, args.data / f"compare-{name}.log"))
                   for name, tree in trees.items()}
        ops = {name: operations(url, bearer, small) for name, (url, _) in servers.items()}
        names = list(next(iter(ops.values())))
        answers: dict[str, set[str]] = {}
        for op in names:
            for tree in trees:
                for _ in range(args.warmup):
                    response = ops[tree][op]()
                assert response.status_code in (200, 207), f"{tree} {op}: {response.status_code}"
                answers.setdefault(op, set()).add(json.dumps(meaning(response.content), sort_keys=True))
        different = [op for op, seen in answers.items() if len(seen) > 1]
        print("same answers from every tree" if not different else f"DIFFERENT ANSWERS: {different}")
        cpu: dict[tuple[str, str], float] = {}
        for op in names:
            for tree, (_, pid) in servers.items():
                before = cpu_seconds(pid)
                for _ in range(args.cpu_repeat):
                    ops[tree][op]()
                cpu[(tree, op)] = (cpu_seconds(pid) - before) * 1000 / args.cpu_repeat
        samples: dict[tuple[str, str], list[float]] = {(t, op): [] for t in trees for op in names}
        for i in range(args.repeat):
            order = [(t, op) for op in names for t in trees]
            for tree, op in (order if i % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                ops[tree][op]()
                samples[(tree, op)].append((time.perf_counter() - started) * 1000)
    print(f"load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| request | " + " | ".join(f"{t} CPU ms/request | {t} median / p95 ms" for t in trees) + " |")
    print("|---|" + "---|---|" * len(trees))
    for op in names:
        cells = []
        for tree in trees:
            ordered = sorted(samples[(tree, op)])
            cells += [f"{cpu[(tree, op)]:.1f}",
                      f"{statistics.median(ordered):.1f} / {ordered[int(0.95 * len(ordered)) - 1]:.1f}"]
        print(f"| {op} | " + " | ".join(cells) + " |")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
