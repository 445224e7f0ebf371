"""Radicale, embedded: configured for our storage, auth and rights, behind a guard.

The guard answers what Radicale would answer with a bare "Bad Request" with a
sentence saying what is wrong, enforces the body limit before Radicale reads
anything, and drops headers a client must not set (X-Script-Name).
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import threading
from collections.abc import Iterable
from xml.parsers import expat
from typing import Any, Callable

import radicale
from radicale import config as radicale_config

from server.db import Database
from server.dav import freebusy_report, transp
from server.dav.auth import Auth
from server.dav.request_scope import request_scope
from server.dav.rights import Rights
from server.dav.storage import Storage
from server.freebusy import expand
from server.freebusy.index import horizon

DAV_PREFIX = "/dav"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_request = threading.local()

# Messages Radicale logs when it refuses a request; the guard sends the reason back.
_REASON_LEVEL = logging.WARNING


class _ReasonCollector(logging.Handler):
    """Keeps Radicale's warnings for the request being handled on this thread."""

    def emit(self, record: logging.LogRecord) -> None:
        reasons = getattr(_request, "reasons", None)
        if reasons is not None and record.levelno >= _REASON_LEVEL:
            try:
                reasons.append(record.getMessage())
            except Exception:  # noqa: BLE001 - never break a request over a log line
                pass


_collector = _ReasonCollector()


def build_radicale(database: Database, *, auth_delay: float, max_body: int) -> WSGIApp:
    configuration = radicale_config.load()
    configuration.update(
        {
            "server": {"max_content_length": str(max_body * 2), "max_resource_size": str(max_body)},
            "auth": {
                "type": functools.partial(Auth, database=database),
                "delay": str(auth_delay),
                "urldecode_username": "True",
                "realm": "Lockstep",
                "cache_logins": "False",
            },
            "rights": {"type": functools.partial(Rights, database=database)},
            "storage": {"type": functools.partial(Storage, database=database)},
            "web": {"type": "none"},
            "logging": {"mask_passwords": "True", "bad_put_request_content": "False"},
        },
        "lockstep",
        privileged=True,
    )
    freebusy_report.install()
    radicale_logger = logging.getLogger("radicale")
    if _collector not in radicale_logger.handlers:
        radicale_logger.addHandler(_collector)
    return radicale.Application(configuration)


class DavGuard:
    """WSGI middleware in front of Radicale."""

    def __init__(self, app: WSGIApp, *, max_body: int) -> None:
        self._app = app
        self._max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop("HTTP_X_SCRIPT_NAME", None)
        length = environ.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            return _plain(start_response, "400 Bad Request", "Content-Length is not a number.")
        if size > self._max_body:
            return _plain(
                start_response,
                "413 Request Entity Too Large",
                f"The request body is {size} bytes; this server accepts at most "
                f"{self._max_body} bytes. Nothing was stored.",
            )
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            return _plain(
                start_response, "411 Length Required", "Send a Content-Length header, not chunked."
            )
        method = environ.get("REQUEST_METHOD", "").upper()
        if method in XML_METHODS and size:
            body_in = environ["wsgi.input"].read(size)
            refusal = _xml_refusal(body_in)
            if refusal:
                return _plain(start_response, "400 Bad Request", f"Bad Request: {refusal}. Nothing was stored.")
            if method != "PROPFIND" and method != "REPORT":
                body_in = transp.rewrite_request(body_in)
            environ["wsgi.input"] = io.BytesIO(body_in)
            environ["CONTENT_LENGTH"] = str(len(body_in))
        if method == "PUT" and size:
            body_in = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = io.BytesIO(body_in)
            refusal = _recurrence_refusal(body_in)
            if refusal:
                return _plain(start_response, "400 Bad Request", f"Bad Request: {refusal}. Nothing was stored.")
        _request.reasons = []
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        try:
            with request_scope():
                body = b"".join(self._app(environ, capture))
            reasons = list(_request.reasons)
        finally:
            _request.reasons = None
        status: str = captured["status"]
        headers: list[tuple[str, str]] = captured["headers"]
        if method == "PROPFIND" and status[:3] == "207":
            body, headers = _rewrite_body(body, headers, transp.rewrite_response)
        if status[:1] == "4" and reasons and status[:3] != "401" and _is_generic(body, headers):
            body = (status[4:] + ": " + _public_reason(reasons[-1]) + "\n").encode()
            replaced = ("content-length", "content-type", "content-encoding")
            headers = [(k, v) for k, v in headers if k.lower() not in replaced]
            headers += [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]


XML_METHODS = ("PROPFIND", "REPORT", "PROPPATCH", "MKCALENDAR", "MKCOL")
MAX_XML_DEPTH = 100  # WebDAV bodies nest a handful of levels; Radicale's XML code recurses per level


def _xml_refusal(body: bytes) -> str | None:
    """Why an XML body would make Radicale answer 500 instead of 400: a DOCTYPE (defusedxml
    refuses entities by raising) or nesting deeper than its recursive serialiser goes.
    Malformed XML is left to Radicale's own 400."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return "XML with a DOCTYPE or entity declarations is not accepted"
    depth = deepest = 0

    def start(*_: Any) -> None:
        nonlocal depth, deepest
        depth += 1
        deepest = max(deepest, depth)

    def end(*_: Any) -> None:
        nonlocal depth
        depth -= 1

    parser = expat.ParserCreate()
    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        parser.Parse(body, True)
    except expat.ExpatError:
        return None
    if deepest > MAX_XML_DEPTH:
        return f"the XML body nests {deepest} elements deep; at most {MAX_XML_DEPTH} are accepted"
    return None


def _recurrence_refusal(body: bytes) -> str | None:
    """Why a recurrence in ``body`` is too costly to accept, checked before Radicale walks it.

    Radicale counts a bounded rule's occurrences one by one, and the busy index
    expands every rule over its window, both while the request waits. A body
    that icalendar cannot read is left to Radicale's own 400.
    """
    if b"RRULE" not in body.upper():
        return None
    try:
        calendar = expand.parse_calendar(body.decode("utf-8"))
    except Exception:  # noqa: BLE001 - unreadable: Radicale refuses it and says why
        return None
    try:
        expand.check_recurrence_cost(calendar, *horizon())
    except expand.TooManyOccurrences as exc:
        return str(exc)
    return None


def _rewrite_body(
    body: bytes, headers: list[tuple[str, str]], rewrite: Callable[[bytes], bytes]
) -> tuple[bytes, list[tuple[str, str]]]:
    """Apply ``rewrite`` to a possibly gzip-encoded body, fixing Content-Length."""
    gzipped = any(k.lower() == "content-encoding" and v == "gzip" for k, v in headers)
    plain = gzip.decompress(body) if gzipped else body
    new = rewrite(plain)
    if new is plain:
        return body, headers
    body = gzip.compress(new) if gzipped else new
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    return body, headers + [("Content-Length", str(len(body)))]


def _is_generic(body: bytes, headers: list[tuple[str, str]]) -> bool:
    """Radicale's canned bodies are just the reason phrase (or empty)."""
    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return False
    elif encoding:
        return False
    text = body.decode("utf-8", "replace").strip()
    return len(text) < 60 and "\n" not in text and not text.startswith("<")


def _public_reason(message: str) -> str:
    """First line only, no tracebacks; paths stay (they are the client's own)."""
    return message.splitlines()[0][:500] if message else "request refused"


def _plain(start_response: Callable[..., Any], status: str, message: str) -> list[bytes]:
    body = (message + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]
