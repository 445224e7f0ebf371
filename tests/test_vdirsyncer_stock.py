"""Prove the vdirsyncer harness against an unmodified Radicale 3.9 server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.vdirsyncer_harness import run_vdirsyncer_scenario

USER = "mike"
PASSWORD = "s3cret-pass"
CALENDAR = "bookings"


@dataclass(frozen=True)
class StockServer:
    """A running stock Radicale and the calendar collection created on it."""

    base_url: str
    calendar_url: str
    username: str
    password: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mkcalendar(url: str) -> None:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        "<D:set><D:prop><D:displayname>Bookings</D:displayname>"
        "<C:supported-calendar-component-set><C:comp name=\"VEVENT\"/>"
        "</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>"
    )
    resp = requests.request(
        "MKCALENDAR",
        url,
        data=body.encode(),
        auth=(USER, PASSWORD),
        headers={"Content-Type": "application/xml; charset=utf-8"},
        timeout=30,
    )
    assert resp.status_code == 201, f"MKCALENDAR {url} -> {resp.status_code}: {resp.text}"


@pytest.fixture
def stock_radicale(tmp_path: Path) -> Iterator[StockServer]:
    """Run ``python -m radicale`` (multifilesystem, plain htpasswd, owner_only)."""
    root = tmp_path / "radicale"
    root.mkdir()
    htpasswd = root / "users"
    htpasswd.write_text(f"{USER}:{PASSWORD}\n", encoding="utf-8")
    port = _free_port()
    config = root / "config"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"hosts = 127.0.0.1:{port}",
                "[auth]",
                "type = htpasswd",
                f"htpasswd_filename = {htpasswd}",
                "htpasswd_encryption = plain",
                "[rights]",
                "type = owner_only",
                "[storage]",
                "type = multifilesystem",
                f"filesystem_folder = {root / 'collections'}",
                "[web]",
                "type = none",
                "[logging]",
                "level = warning",
                "",
            ]
        ),
        encoding="utf-8",
    )
    log_path = root / "radicale.log"
    env = {k: v for k, v in os.environ.items() if k != "RADICALE_CONFIG"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
        )
    base_url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"radicale exited early:\n{log_path.read_text()}")
            try:
                requests.get(base_url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"radicale did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
        calendar_url = f"{base_url}{USER}/{CALENDAR}/"
        _mkcalendar(calendar_url)
        yield StockServer(base_url, calendar_url, USER, PASSWORD)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_vdirsyncer_two_way_sync_against_stock_radicale(
    stock_radicale: StockServer, tmp_path: Path
) -> None:
    """200 local + 5 server events, edits and deletions on both sides sync cleanly."""
    run_vdirsyncer_scenario(
        stock_radicale.calendar_url,
        stock_radicale.username,
        stock_radicale.password,
        tmp_path / "vdirsyncer",
    )
