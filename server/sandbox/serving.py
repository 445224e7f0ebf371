"""Running an emulator's WSGI app on a daemon thread beside the code that talks to it."""

from __future__ import annotations

import ssl
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without a log line per request."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class BackgroundServer:
    """One threaded Werkzeug server; start() returns the bound port (0 asks for a free one)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, app: Any, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        self._server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler,
                                   ssl_context=ssl_context)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
