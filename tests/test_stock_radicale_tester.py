"""caldav-server-tester against stock Radicale: the reference feature matrix."""

from __future__ import annotations

from pathlib import Path

from tests.support.server_tester import run_caldav_server_tester
from tests.support.stock_radicale import start_stock_radicale

# Features stock Radicale 3.9 must report as fully supported.
BASIC_FEATURES = (
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


def test_server_tester_against_stock_radicale(tmp_path: Path) -> None:
    with start_stock_radicale(tmp_path / "radicale", {"alice": "alice-pw"}) as server:
        features = run_caldav_server_tester(server.url, "alice", "alice-pw", tmp_path / "tester")
        assert server.process.poll() is None, "Radicale died during the tester run"

    assert len(features) > 20, features
    not_full = {name: features.get(name, "<missing>") for name in BASIC_FEATURES}
    not_full = {name: status for name, status in not_full.items() if status != "full"}
    assert not not_full, f"basic features not fully supported by stock Radicale: {not_full}"
