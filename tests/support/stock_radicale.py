"""Start a stock (unmodified) Radicale 3.9 server in a subprocess for tests.

The server uses Radicale's default ``multifilesystem`` storage, plain-text
htpasswd authentication and ``owner_only`` rights, and listens on a free
127.0.0.1 port.  It serves as the reference implementation that Lockstep is
compared against.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class StockRadicale:
    """A running stock Radicale instance."""

    url: str
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log_file: Path


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(tmp_dir: Path, users: dict[str, str], port: int) -> Path:
    """Write the htpasswd file and Radicale config; return the config path."""
    for name, password in users.items():
        if ":" in name or "\n" in name or "\n" in password:
            raise ValueError(f"invalid htpasswd entry for user {name!r}")
    htpasswd = tmp_dir / "users.htpasswd"
    htpasswd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
    storage = tmp_dir / "collections"
    storage.mkdir(parents=True, exist_ok=True)
    config = tmp_dir / "radicale.conf"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"hosts = 127.0.0.1:{port}",
                "delay_on_error = 0",
                "[auth]",
                "type = htpasswd",
                f"htpasswd_filename = {htpasswd}",
                "htpasswd_encryption = plain",
                "delay = 0",
                "[rights]",
                "type = owner_only",
                "[storage]",
                "type = multifilesystem",
                f"filesystem_folder = {storage}",
                "[web]",
                "type = none",
                "[logging]",
                "level = warning",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    """Poll ``url`` until the server answers HTTP (any status) or fail."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"stock Radicale exited with code {process.returncode} during startup; "
                f"log:\n{log_file.read_text(errors='replace')}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer (e.g. 401) means it is serving
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"stock Radicale did not answer on {url} within {STARTUP_TIMEOUT}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server process, killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def start_stock_radicale(tmp_dir: Path, users: dict[str, str]) -> Iterator[StockRadicale]:
    """Run stock Radicale with data in ``tmp_dir`` for the given users.

    Yields a :class:`StockRadicale` once the server answers HTTP and stops
    the server when the block exits.  Radicale's output (warning level and
    above) goes to ``tmp_dir / "radicale.log"``.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = _write_config(tmp_dir, users, port)
    log_file = tmp_dir / "radicale.log"
    env = {k: v for k, v in os.environ.items() if k != "RADICALE_CONFIG"}
    url = f"http://127.0.0.1:{port}/"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_dir,
            env=env,
        )
    try:
        _wait_until_up(url, process, log_file)
        yield StockRadicale(url=url, process=process, port=port, root=tmp_dir, log_file=log_file)
    finally:
        _stop(process)
