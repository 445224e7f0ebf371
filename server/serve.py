"""``lockstep serve``: cheroot (threaded, production WSGI server) on one port."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from server.app import create_app
from server.config import Config
from server.db import Database
from server.freebusy.maintenance import start_maintenance

log = logging.getLogger("lockstep.serve")


def serve(config: Config, args: argparse.Namespace) -> int:
    server_values = config.values["server"]
    for key in ("host", "port", "tls_cert", "tls_key"):
        value = getattr(args, key, None)
        if value:
            server_values[key] = value
    if bool(server_values["tls_cert"]) != bool(server_values["tls_key"]):
        log.error("--tls-cert and --tls-key go together")
        return 2
    lockstep = create_app(config)
    host, port = server_values["host"], int(server_values["port"])
    server = wsgi.Server(
        (host, port),
        lockstep.wsgi,
        numthreads=server_values["threads"],
        server_name="lockstep",
        max=-1,
        request_queue_size=128,
    )
    if server_values["tls_cert"]:
        server.ssl_adapter = BuiltinSSLAdapter(server_values["tls_cert"], server_values["tls_key"])
    stop = threading.Event()
    if not getattr(args, "no_workers", False):
        start_background(config, lockstep.database, stop)

    def _shutdown(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        log.info("signal %d: shutting down", signum)
        stop.set()
        # cheroot's stop() joins the serving loop: never call it on the loop's own thread.
        threading.Thread(target=server.stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    server.prepare()
    bound_port = server.bind_addr[1] if isinstance(server.bind_addr, tuple) else port
    log.info(
        "Lockstep serving %s on %s:%s (CalDAV at /dav/, database %s)",
        "https" if server_values["tls_cert"] else "http",
        host,
        bound_port,
        "sqlite" if lockstep.database.is_sqlite else "postgresql",
    )
    try:
        server.serve()
    finally:
        lockstep.database.dispose()
    return 0


def start_background(config: Config, database: Database, stop: threading.Event) -> list[threading.Thread]:
    """The busy-index horizon job and the sync workers (in serve, or in ``lockstep worker``)."""
    from server.caldav_bridge.engine import Bridge
    from server.caldav_bridge.worker import start_sync_workers
    from server.connections import key_ring
    from server.security import load_or_create_secret_key

    ring = key_ring(config, load_or_create_secret_key(config.data_dir, config.get("security", "secret_key")))
    bridge = Bridge(database, config, ring)
    return [start_maintenance(database, stop), *start_sync_workers(bridge, stop, config.get("sync", "workers"))]


def run_workers(config: Config) -> int:
    """``lockstep worker``: the background jobs without the web server, until SIGTERM."""
    from server.db import open_database

    database = open_database(config)
    stop = threading.Event()

    def _shutdown(signum: int, _frame: object) -> None:
        log.info("signal %d: worker shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    log.info("Lockstep worker started (database %s)", "sqlite" if database.is_sqlite else "postgresql")
    threads = start_background(config, database, stop)
    while not stop.wait(1):
        pass
    for thread in threads:
        thread.join(timeout=10)
    database.dispose()
    return 0
