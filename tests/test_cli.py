"""The ``lockstep tech`` and ``token`` commands against a running server."""

from __future__ import annotations

import re
import secrets

import requests

from tests.support.lockstep_server import LockstepServer

PROPFIND = "<propfind xmlns='DAV:'><prop><displayname/></prop></propfind>"


def _propfind(server: LockstepServer, user: str, auth: tuple[str, str]) -> int:
    return requests.request("PROPFIND", f"{server.dav_url}{user}/", auth=auth, data=PROPFIND,
                            headers={"Depth": "0"}).status_code


def test_tech_add_prints_account_and_generated_password(server: LockstepServer) -> None:
    out = server.cli("tech", "add", "mike-cli", "--name", "Mike R", "--email", "mike@example.com",
                     "--tz", "America/Los_Angeles").stdout
    assert f"CalDAV server:     {server.url}/dav/" in out
    assert "User name:         mike-cli" in out
    match = re.search(r"App password:\s+(\S+)", out)
    assert match, out
    assert _propfind(server, "mike-cli", ("mike-cli", match.group(1))) == 207
    listed = server.cli("tech", "list").stdout
    assert re.search(r"^mike-cli\s+Mike R\s+mike@example.com\s+America/Los_Angeles", listed, re.M)


def test_password_change_takes_effect_at_once(server: LockstepServer) -> None:
    user, old = server.add_tech()
    assert _propfind(server, user, (user, old)) == 207
    server.cli("tech", "password", user, "--password=new-secret-1")
    assert _propfind(server, user, (user, old)) == 401
    assert _propfind(server, user, (user, "new-secret-1")) == 207
    out = server.cli("tech", "password", user).stdout
    generated = re.search(r"App password:\s+(\S+)", out)
    assert generated and _propfind(server, user, (user, generated.group(1))) == 207


def test_tech_remove_deletes_login_and_calendars(server: LockstepServer) -> None:
    user, password = server.add_tech()
    bookings = f"{server.dav_url}{user}/bookings/"
    put = requests.put(bookings + "a.ics", auth=(user, password), data=(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:a\r\nDTSTAMP:20261101T000000Z\r\n"
        "DTSTART:20261201T170000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
    assert put.status_code == 201
    token = server.create_token(scope="bookings")
    server.cli("tech", "remove", user)
    assert _propfind(server, user, (user, password)) == 401
    assert requests.get(bookings + "a.ics", auth=token).status_code in (403, 404)
    # The name is free again, and the new home starts empty.
    server.add_tech(user, "again-123")
    assert requests.get(bookings + "a.ics", auth=(user, "again-123")).status_code == 404


def test_refusals_say_what_is_wrong(server: LockstepServer) -> None:
    cases = {
        ("tech", "add", "Bad Name", "--name", "x", "--email", "x@example.com", "--tz", "UTC"): "not a valid user name",
        ("tech", "add", "zoneless", "--name", "x", "--email", "x@example.com", "--tz", "Mars/Olympus"): "not an IANA time zone",
        ("tech", "add", "hourless", "--name", "x", "--email", "x@example.com", "--tz", "UTC",
         "--hours", "mon-fri 17:00-08:00"): "the end must be after the start",
        ("tech", "add", "mailless", "--name", "x", "--email", "nope", "--tz", "UTC"): "not an e-mail address",
        ("tech", "remove", "ghost"): "no tech named 'ghost'",
        ("tech", "password", "ghost"): "no tech named 'ghost'",
    }
    for args, message in cases.items():
        result = server.cli(*args, check=False)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
    user, _ = server.add_tech()
    duplicate = server.cli("tech", "add", user, "--name", "x", "--email", "x@example.com", "--tz", "UTC", check=False)
    assert duplicate.returncode == 1 and "already taken" in duplicate.stderr


def test_token_create_then_revoke_stops_it_at_once(server: LockstepServer) -> None:
    name = "app" + secrets.token_hex(3)
    bearer = server.cli("token", "create", name, "--scope", "freebusy").stdout.strip().splitlines()[-1]
    health = f"{server.url}/api/v1/techs"
    assert requests.get(health, headers={"Authorization": f"Bearer {bearer}"}).status_code == 200
    assert f"Revoked token {name}" in server.cli("token", "revoke", name).stdout
    assert requests.get(health, headers={"Authorization": f"Bearer {bearer}"}).status_code == 401
    again = server.cli("token", "revoke", name, check=False)
    assert again.returncode == 1 and "no API token named" in again.stderr
