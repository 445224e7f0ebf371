"""Composition: one WSGI callable for the one port (CalDAV at /dav/, Flask for the rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from server import metrics
from server.config import Config
from server.db import Database, open_database
from server.dav.app import DAV_PREFIX, DavGuard, WSGIApp, build_radicale
from server.security import load_or_create_secret_key
from server.web import create_flask_app

WELL_KNOWN = ("/.well-known/caldav", "/.well-known/carddav")
# Proxy headers (Radicale reads some of them itself): applied or dropped, never passed through blindly.
FORWARDED_HEADERS = (
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_SERVER",
)


@dataclass
class Lockstep:
    config: Config
    database: Database
    wsgi: WSGIApp


def create_app(config: Config, database: Database | None = None) -> Lockstep:
    database = database or open_database(config)
    secret_key = load_or_create_secret_key(config.data_dir, config.get("security", "secret_key"))
    max_body = config.get("server", "max_body_bytes")
    dav = DavGuard(
        build_radicale(database, auth_delay=config.get("server", "auth_delay"), max_body=max_body),
        max_body=max_body,
    )
    flask_app = create_flask_app(database, config, secret_key)
    metrics.install(flask_app, database)
    dispatcher = Dispatcher(dav, flask_app.wsgi_app, trust_forwarded=config.get("server", "trust_forwarded"))
    return Lockstep(config=config, database=database, wsgi=metrics.Instrumented(dispatcher))


class Dispatcher:
    """Routes by path prefix; applies X-Forwarded-* only when configured to trust them."""

    def __init__(self, dav: WSGIApp, web: WSGIApp, *, trust_forwarded: bool) -> None:
        self._dav = dav
        self._web = web
        self._trust_forwarded = trust_forwarded

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._trust_forwarded:
            _apply_forwarded(environ)
        else:
            for header in FORWARDED_HEADERS:
                environ.pop(header, None)
        path = environ.get("PATH_INFO", "") or "/"
        if path.rstrip("/") in WELL_KNOWN or path == DAV_PREFIX:
            return _redirect(start_response, environ, DAV_PREFIX + "/")
        if path.startswith(DAV_PREFIX + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + DAV_PREFIX
            environ["PATH_INFO"] = path[len(DAV_PREFIX):]
            return self._dav(environ, start_response)
        return self._web(environ, start_response)


def _apply_forwarded(environ: dict[str, Any]) -> None:
    """Make the environ describe the request as the client sent it to the proxy.

    Radicale reads X-Forwarded-Proto/Host/Port itself (MOVE's Destination check,
    /.mobileconfig), so the headers are normalised or dropped here, and
    SERVER_PORT becomes the port the client used, never the backend's: behind a
    proxy with ``Host: cal.example.com`` and ``X-Forwarded-Proto: https`` that is
    443, not 5232.
    """
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        environ["wsgi.url_scheme"] = proto
        environ["HTTPS"] = "on" if proto == "https" else ""
        environ["HTTP_X_FORWARDED_PROTO"] = proto
    else:
        environ.pop("HTTP_X_FORWARDED_PROTO", None)
    host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
    if host and all(c.isalnum() or c in ".-:[]" for c in host):
        environ["HTTP_HOST"] = environ["HTTP_X_FORWARDED_HOST"] = host
    else:
        environ.pop("HTTP_X_FORWARDED_HOST", None)
    port = environ.get("HTTP_X_FORWARDED_PORT", "").split(",")[0].strip()
    if port.isdigit() and 0 < int(port) < 65536:
        environ["HTTP_X_FORWARDED_PORT"] = port
    else:
        environ.pop("HTTP_X_FORWARDED_PORT", None)
        port = _explicit_port(environ.get("HTTP_HOST", "")) or (
            "443" if environ.get("wsgi.url_scheme") == "https" else "80"
        )
    environ["SERVER_PORT"] = port


def _explicit_port(host: str) -> str:
    """The port in a Host header value ("h:8443", "[::1]:8443"), or ""."""
    if host.endswith("]") or ":" not in host:
        return ""
    port = host.rsplit(":", 1)[1]
    return port if port.isdigit() else ""


def _redirect(start_response: Callable[..., Any], environ: dict[str, Any], target: str) -> list[bytes]:
    location = environ.get("SCRIPT_NAME", "").rstrip("/") + target
    body = f"Moved to {location}\n".encode()
    start_response(
        "301 Moved Permanently",
        [("Location", location), ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
