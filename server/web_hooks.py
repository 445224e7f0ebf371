"""/hooks/google: push notifications. Answer fast, verify the channel token, queue a sync."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from server import jobs
from server.caldav_bridge.engine import JOB_SYNC
from server.db import Database
from server.models import RemoteCalendarRow

log = logging.getLogger("lockstep.hooks")


def create_hooks_blueprint(database: Database) -> Blueprint:
    hooks = Blueprint("hooks", __name__, url_prefix="/hooks")

    @hooks.post("/google")
    def google():  # type: ignore[no-untyped-def]
        channel = request.headers.get("X-Goog-Channel-ID", "")
        token = request.headers.get("X-Goog-Channel-Token", "")
        resource = request.headers.get("X-Goog-Resource-ID", "")
        state = request.headers.get("X-Goog-Resource-State", "")
        if not channel or not state:
            return jsonify(error="bad_request", message="not a Google push notification"), 400
        with database.write(["hooks"]) as session:
            row = session.scalar(select(RemoteCalendarRow).where(RemoteCalendarRow.watch_channel == channel))
            valid = (row is not None and hmac.compare_digest(row.watch_token, token)
                     and hmac.compare_digest(row.watch_resource, resource))
            if not valid:
                log.warning("rejected Google notification for unknown channel or wrong token")
                return jsonify(error="forbidden", message="unknown channel or wrong token"), 403
            assert row is not None
            if state != "sync":  # "sync" only confirms the channel
                jobs.enqueue(session, JOB_SYNC, {"calendar": row.id}, dedupe_key=f"sync:{row.id}")
        return "", 200

    return hooks
