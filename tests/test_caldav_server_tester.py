"""caldav-server-tester: every feature stock Radicale 3.9 supports fully, Lockstep does too.

One test per backend probes stock Radicale (file storage, the reference) and
Lockstep with the same tool and compares the two feature matrices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.lockstep_server import LockstepServer
from tests.support.server_tester import feature_status, run_caldav_server_tester_details
from tests.support.stock_radicale import start_stock_radicale

# Features stock Radicale 3.9 must report as fully supported: proof that the
# reference run probed a working server rather than failing early.
CORE_FEATURES = (
    "get-current-user-principal",
    "create-calendar",
    "delete-calendar",
    "propfind",
    "save-load.event",
    "save-load.todo",
    "save-load.mutable",
    "save.etag",
    "search.time-range.event",
    "search.text.substring",
    "search.comp-type",
    "sync-token",
    "sync-token.delete",
    "freebusy-query",
)
STOCK_USER, STOCK_PASSWORD = "alice", "alice-pw"

Details = dict[str, dict[str, Any]]


def _statuses(details: Details) -> dict[str, str]:
    return {name: feature_status(info) for name, info in details.items()}


def _behaviour(details: Details, feature: str) -> str:
    return str(details.get(feature, {}).get("behaviour", ""))


def _report(stock: Details, lockstep: Details, features: list[str]) -> str:
    """One block per feature: both statuses and what the tester observed."""
    lines = []
    for name in features:
        lines.append(
            f"  {name}: stock={feature_status(stock[name])} "
            f"lockstep={feature_status(lockstep[name]) if name in lockstep else '<missing>'}"
        )
        for side, details in (("stock", stock), ("lockstep", lockstep)):
            if _behaviour(details, name):
                lines.append(f"      {side} behaviour: {_behaviour(details, name)}")
    return "\n".join(lines)


def _logged_errors(log_file: Path, offset: int) -> list[str]:
    text = log_file.read_bytes()[offset:].decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]


@pytest.mark.slow
def test_lockstep_supports_every_feature_stock_radicale_supports(
    server: LockstepServer, tech: tuple[str, str], tmp_path: Path
) -> None:
    with start_stock_radicale(tmp_path / "radicale", {STOCK_USER: STOCK_PASSWORD}) as stock_server:
        stock = run_caldav_server_tester_details(
            stock_server.url, STOCK_USER, STOCK_PASSWORD, tmp_path / "tester-stock"
        )
        assert stock_server.process.poll() is None, "stock Radicale died during the tester run"

    stock_status = _statuses(stock)
    assert len(stock_status) > 20, f"too few features probed on stock Radicale: {stock_status}"
    core_not_full = {
        name: stock_status.get(name, "<missing>")
        for name in CORE_FEATURES
        if stock_status.get(name) != "full"
    }
    assert not core_not_full, f"stock Radicale does not fully support core features: {core_not_full}"

    user, password = tech
    log_offset = server.log_file.stat().st_size
    lockstep = run_caldav_server_tester_details(
        server.dav_url, user, password, tmp_path / "tester-lockstep"
    )
    assert server.process is not None and server.process.poll() is None, "Lockstep died"
    lockstep_status = _statuses(lockstep)

    regressions = sorted(
        name
        for name, status in stock_status.items()
        if status == "full" and lockstep_status.get(name) != "full"
    )
    other_differences = sorted(
        name
        for name in stock_status.keys() | lockstep_status.keys()
        if name not in regressions and stock_status.get(name) != lockstep_status.get(name)
    )
    if other_differences:  # shown with -s or on failure; not failures by themselves
        print("features where Lockstep differs from stock (not regressions):")
        print(_report(stock, lockstep, [n for n in other_differences if n in stock]))
        for name in other_differences:
            if name not in stock:
                print(f"  {name}: stock=<missing> lockstep={lockstep_status[name]}")
    assert not regressions, (
        f"{len(regressions)} feature(s) fully supported by stock Radicale 3.9 are not on "
        f"Lockstep (tester output in {tmp_path}, server log {server.log_file}):\n"
        + _report(stock, lockstep, regressions)
    )
    errors = _logged_errors(server.log_file, log_offset)
    assert not errors, "Lockstep logged errors during the tester run:\n" + "\n".join(errors[:20])
