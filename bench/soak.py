"""Convergence soak: many seeded scenarios of operations and faults, each checked after quiescence.

    .venv/bin/python bench/soak.py --scenarios 1000 [--seed S]
        [--providers google,microsoft,google+microsoft] [--backends sqlite,postgresql] [--restart-every 100] [--lanes N] [--json FILE]

Seeds are S, S+1, ... (S defaults to one derived from the clock, printed
first). Each scenario runs on a fresh tech (tests/support/convergence.py);
one server + worker + emulator serve many scenarios and are restarted every
``--restart-every``. ``google+microsoft`` is one tech connected to both
emulators at once (bookings to Google, personal events from both;
``microsoft+google`` connects Outlook first, so bookings go there). A failure
prints its seed, the broken invariants and the step log; replay it with ``--seed <seed> --scenarios 1`` (same code: a change to
the operations changes what a seed does). A scenario spends most of its time
waiting for syncs, so ``--lanes N`` runs N child soaks side by side, each with its
own processes and emulators, lane i taking every N-th seed from S + i; the
parent prints their lines, then one summary of all. SIGTERM or Ctrl-C stops it cleanly
with a summary. Exit status 1 when any scenario failed. PostgreSQL needs
LOCKSTEP_TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.convergence import ScenarioFailed, run_scenario  # noqa: E402
from tests.support.convergence_world import open_world  # noqa: E402
from tests.support.convergence import OBSERVABLE as SUPPORTED  # noqa: E402
from tests.support.remote_accounts import PROVIDERS  # noqa: E402

UNSUPPORTED = tuple(p for p in PROVIDERS if p not in SUPPORTED)
DEFAULT = ("google", "microsoft")  # each alone; google+microsoft when asked for
CHILD_ENV = "LOCKSTEP_SOAK_CHILD"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenarios", type=int, default=100, help="scenarios per provider and backend")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    parser.add_argument("--providers", default=",".join(DEFAULT),
                        help=f"comma-separated, of {SUPPORTED} (the runner cannot yet observe {UNSUPPORTED})")
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--restart-every", type=int, default=100, help="fresh processes after this many")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--json", type=Path, help="write every scenario's outcome here")
    parser.add_argument("--lanes", type=int, default=1, help="child soaks side by side, seeds dealt out in turn")
    parser.add_argument("--lane", type=int, default=0, help=argparse.SUPPRESS)  # set by the parent for a child
    args = parser.parse_args(argv)
    unknown = {p.strip() for p in args.providers.split(",") if p.strip()} - set(SUPPORTED)
    if unknown:
        parser.error(f"no convergence observation for {', '.join(sorted(unknown))} yet; use {SUPPORTED}")
    first = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    print(f"soak: {args.scenarios} scenario(s) per provider/backend from seed {first}", flush=True)
    outcomes: list[dict[str, object]] = []
    failed: list[str] = []
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # background runs ignore SIGINT; stop them cleanly too
    try:
        if args.lanes > 1 and args.lane == 0 and not _is_child():
            _run_lanes(args, first, outcomes, failed)
        else:
            _run(args, first, outcomes, failed)
    except KeyboardInterrupt:
        print("\nsoak: interrupted; summary of the scenarios that finished", flush=True)
    return _finish(outcomes, failed, began, args.json)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, first: int, outcomes: list[dict[str, object]], failed: list[str]) -> None:
    for provider in [p.strip() for p in args.providers.split(",") if p.strip()]:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            seeds = [seed for seed in range(first, first + args.scenarios) if (seed - first) % args.lanes == args.lane]
            for batch in range(0, len(seeds), max(1, args.restart_every)):
                with tempfile.TemporaryDirectory(prefix="lockstep-soak-") as tmp, \
                        open_world(Path(tmp), backend, provider) as world:
                    for seed in seeds[batch:batch + args.restart_every]:
                        done = len(outcomes) + 1
                        try:
                            result = run_scenario(world, seed)
                        except ScenarioFailed as failure:
                            failed.append(f"{provider}/{backend} seed {seed}")
                            outcomes.append({"provider": provider, "backend": backend, "seed": seed,
                                             "ok": False, "error": str(failure)})
                            print(f"[{done}] {provider}/{backend} seed {seed} FAILED\n{failure}\n", flush=True)
                            if args.stop_on_failure:
                                return
                            continue
                        outcomes.append({"provider": provider, "backend": backend, "seed": seed, "ok": True,
                                         "steps": result.steps, "seconds": round(result.seconds, 2),
                                         "quiesce_seconds": round(result.quiesce_seconds, 2),
                                         "bookings": result.bookings, "items": result.items,
                                         "conflicts": result.conflicts, "faults": list(result.faults),
                                         "shapes": list(result.shapes), "fault_sides": list(result.fault_sides)})
                        print(f"[{done}] {provider}/{backend} seed {seed} ok: {result.steps} steps, "
                              f"{result.seconds:.1f}s (quiescence {result.quiesce_seconds:.1f}s), "
                              f"{result.bookings} booking(s), {result.items} item(s), "
                              f"{result.conflicts} conflict(s), "
                              f"faults: {', '.join(result.fault_sides or result.faults) or 'none'}; "
                              f"shapes: {', '.join(result.shapes) or 'none'}",
                              flush=True)


def _is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def _run_lanes(args: argparse.Namespace, first: int, outcomes: list[dict[str, object]], failed: list[str]) -> None:
    """Child soaks, one per lane, their output passed on line by line with the lane's number."""
    with tempfile.TemporaryDirectory(prefix="lockstep-soak-lanes-") as tmp:
        children: list[tuple[int, subprocess.Popen[str], Path]] = []
        for lane in range(args.lanes):
            out = Path(tmp) / f"lane-{lane}.json"
            command = [sys.executable, __file__, "--scenarios", str(args.scenarios), "--seed", str(first),
                       "--providers", args.providers, "--backends", args.backends, "--restart-every",
                       str(args.restart_every), "--lanes", str(args.lanes), "--lane", str(lane), "--json", str(out)]
            if args.stop_on_failure:
                command.append("--stop-on-failure")
            children.append((lane, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                    text=True, env={**os.environ, CHILD_ENV: "1"}), out))
        readers = [threading.Thread(target=_relay, args=(lane, child), daemon=True) for lane, child, _ in children]
        for reader in readers:
            reader.start()
        try:
            for _, child, _ in children:
                child.wait()
        finally:
            for _, child, _ in children:
                if child.poll() is None:
                    child.terminate()  # each child stops cleanly and still writes its outcomes
            for _, child, _ in children:
                child.wait()
            for reader in readers:
                reader.join(timeout=10)
            for _, _, out in children:
                if out.exists():
                    outcomes.extend(json.loads(out.read_text()))
        failed.extend(f"{o['provider']}/{o['backend']} seed {o['seed']}" for o in outcomes if not o["ok"])


def _relay(lane: int, child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        print(f"lane {lane}: {line}", end="", flush=True)


def _finish(outcomes: list[dict[str, object]], failed: list[str], began: float, out: Path | None) -> int:
    times = [float(o["seconds"]) for o in outcomes if o["ok"]]  # type: ignore[arg-type]
    quiet = [float(o["quiesce_seconds"]) for o in outcomes if o["ok"]]  # type: ignore[arg-type]
    print(f"\nsoak: {len(outcomes)} scenario(s) in {time.monotonic() - began:.0f}s, {len(failed)} failed")
    if times:
        print(f"per scenario: median {statistics.median(times):.1f}s, max {max(times):.1f}s; "
              f"quiescence median {statistics.median(quiet):.1f}s, max {max(quiet):.1f}s")
    for name in failed:
        print(f"  FAILED {name}")
    if out is not None:
        out.write_text(json.dumps(outcomes, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
