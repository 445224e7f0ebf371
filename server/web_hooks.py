"""/hooks/google and /hooks/microsoft: push notifications. Answer fast, verify the channel token
(clientState), queue a sync."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from server import jobs
from server.caldav_bridge.engine import JOB_SYNC, JOB_WATCH
from server.db import Database
from server.models import Job, RemoteCalendarRow

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

    @hooks.post("/microsoft")
    def microsoft():  # type: ignore[no-untyped-def]
        """Graph change and lifecycle notifications (one URL for both). The subscription
        handshake is echoed; every item is checked against the subscription's clientState
        and queued; the answer is 202 at once (Graph allows 3 s). Items with an unknown
        subscription or a wrong clientState are logged and dropped, changing nothing; they
        still get 202, since an error makes Graph retry for hours what we will never accept."""
        token = request.args.get("validationToken")
        if token is not None:
            return token, 200, {"Content-Type": "text/plain; charset=utf-8",
                                "X-Content-Type-Options": "nosniff"}
        if (request.content_length or 0) > MICROSOFT_MAX_BODY:
            return jsonify(error="too_large", message="notification bodies are limited to "
                                                      f"{MICROSOFT_MAX_BODY} bytes"), 400
        try:
            items = json.loads(request.get_data(cache=False) or b"null")["value"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested absurdly deep
            return jsonify(error="bad_request",
                           message="not a Microsoft Graph notification (JSON with value[])"), 400
        with database.write(["hooks"]) as session:
            for item in items:
                _microsoft_item(session, item)
        return "", 202

    return hooks


MICROSOFT_MAX_BODY = 512 * 1024


def _microsoft_item(session: Any, item: dict[str, Any]) -> None:
    subscription = str(item.get("subscriptionId") or "")
    row = session.scalar(select(RemoteCalendarRow).where(
        RemoteCalendarRow.watch_channel == subscription)) if subscription else None
    state = str(item.get("clientState") or "").encode()
    if row is None or not row.watch_token or \
            not hmac.compare_digest(row.watch_token.encode(), state):
        log.warning("rejected Microsoft notification for unknown subscription or wrong clientState")
        return
    event = str(item.get("lifecycleEvent") or "")
    if event in ("reauthorizationRequired", "subscriptionRemoved"):
        _renew_now(session, row.id)
    if event != "reauthorizationRequired":  # a change, a removed subscription, missed ones
        jobs.enqueue(session, JOB_SYNC, {"calendar": row.id}, dedupe_key=f"sync:{row.id}")
    if event:
        log.info("microsoft lifecycle %s for calendar %s", event, row.id)


def _renew_now(session: Any, calendar_id: int) -> None:
    """Open a new subscription now: pull the waiting half-life renewal forward, or queue one."""
    key = f"watch:{calendar_id}"
    waiting = session.scalar(select(Job).where(Job.kind == JOB_WATCH, Job.dedupe_key == key,
                                               Job.state == jobs.READY).limit(1))
    if waiting is not None:
        waiting.run_at = datetime.now(timezone.utc)
    else:
        jobs.enqueue(session, JOB_WATCH, {"calendar": calendar_id}, dedupe_key=key)
