"""The Flask side of the one port: health now; /api, /hooks, /oauth and /admin plug in here."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from sqlalchemy import text

from admin import create_admin_blueprint
from server.api.routes import create_api
from server.config import Config
from server.connections import key_ring
from server.db import Database
from server.web_hooks import create_hooks_blueprint
from server.web_oauth import create_oauth_blueprint


class _JSONProvider(DefaultJSONProvider):
    """JSON nested deep enough to exhaust the parser's recursion is malformed input (a 400), not a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def create_flask_app(database: Database, config: Config, secret_key: str) -> Flask:
    app = Flask("lockstep")
    app.json = _JSONProvider(app)
    app.config.update(SECRET_KEY=secret_key, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(create_api(database))
    app.register_blueprint(create_oauth_blueprint(database, config, key_ring(config, secret_key)))
    app.register_blueprint(create_hooks_blueprint(database))
    app.register_blueprint(create_admin_blueprint(database, config, secret_key))

    @app.before_request
    def refuse_nul():  # type: ignore[no-untyped-def]
        """A NUL in the path, query or credentials is never meaningful, and PostgreSQL text cannot hold one."""
        parts = [request.path, *(item for key, values in request.args.lists() for item in (key, *values))]
        if any("\x00" in part for part in parts):
            return jsonify(error="invalid_parameter", message="The address contains a NUL character."), 400
        if "\x00" in request.headers.get("Authorization", ""):
            return jsonify(error="unauthorized", message="The credentials contain a NUL character."), 401
        return None

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        """Liveness for load balancers and Docker: the database answers."""
        try:
            with database.read() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - report, don't crash the probe
            return jsonify(status="error", message=f"database unavailable: {type(exc).__name__}"), 503
        return jsonify(status="ok")

    @app.errorhandler(404)
    def not_found(_error):  # type: ignore[no-untyped-def]
        return jsonify(error="not_found", message="No such endpoint."), 404

    @app.errorhandler(500)
    def server_error(_error):  # type: ignore[no-untyped-def]
        return jsonify(error="internal_error", message="Something went wrong on the server; nothing was changed."), 500

    @app.errorhandler(405)
    def not_allowed(_error):  # type: ignore[no-untyped-def]
        return jsonify(error="method_not_allowed", message="This endpoint does not take that method."), 405

    return app
