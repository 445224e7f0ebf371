"""/oauth/<provider>/start and /callback: the browser half of connecting an account."""

from __future__ import annotations

import html
from urllib.parse import urlencode

from flask import Blueprint, redirect, request

from server.config import Config
from server.connections import ConnectError, begin_consent, finish_consent
from server.crypto import KeyRing
from server.db import Database

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Lockstep</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto">
<h1>{title}</h1><p>{message}</p></body></html>"""


def _page(status: int, title: str, message: str) -> tuple[str, int, dict[str, str]]:
    body = PAGE.format(title=html.escape(title), message=html.escape(message))
    return body, status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}


def create_oauth_blueprint(database: Database, config: Config, ring: KeyRing) -> Blueprint:
    oauth = Blueprint("oauth", __name__, url_prefix="/oauth")

    @oauth.get("/<provider>/start")
    def start(provider: str):  # type: ignore[no-untyped-def]
        try:
            return redirect(begin_consent(database, config, ring, provider, request.args.get("link", "")))
        except ConnectError as exc:
            return _page(400, "Cannot connect", str(exc))

    @oauth.route("/<provider>/callback", methods=["GET", "POST"])
    def callback(provider: str):  # type: ignore[no-untyped-def]
        # GET: the answer is in the query; POST: response_mode=form_post (Microsoft), in the body.
        answer = request.form if request.method == "POST" else request.args
        if answer.get("error"):
            return _page(400, "Not connected", f"The account was not connected ({answer['error']}). "
                                               "Ask for a new connect link to try again.")
        url = f"{request.base_url}?{urlencode(list(answer.items(multi=True)))}" if request.method == "POST" \
            else request.url
        try:
            connected = finish_consent(database, config, ring, provider, answer.get("state", ""), url)
        except ConnectError as exc:
            return _page(400, "Not connected", str(exc))
        return _page(200, "Connected", f"{provider.capitalize()} is now connected for {connected.tech}. "
                                       "Calendars are being imported; you can close this window.")

    return oauth
