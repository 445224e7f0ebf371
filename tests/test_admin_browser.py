"""The admin panel in a real headless Chromium (Debian's chromium driven by Playwright).

One ``lockstep serve`` process wired to the Google emulator: log in, add a tech,
connect Google through the emulator's consent page, choose calendars, watch the
connection turn ok, add an overlapping personal event "in Google" and watch the
conflict appear. Every page is saved under docs/screenshots/ for README.md.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from playwright.sync_api import Browser, Page, Response, sync_playwright
from sqlalchemy import select

from admin.accounts import create_admin
from server.models import ApiToken, AuditEntry, Connection
from server.sandbox.google import GoogleSandbox
from server.sandbox.graph import GraphSandbox
from tests.support.google_env import connect_google, google_env
from tests.support.microsoft_env import graph_env
from tests.support.lockstep_server import LockstepServer, running_server


CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PASSWORD = "correct horse battery"
UTC = timezone.utc

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as sandbox:
        yield sandbox


class _Dispatch(BaseHTTPRequestHandler):
    """A dispatch system's webhook endpoint: takes the signed POST, answers 204."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def dispatch_webhook() -> Iterator[str]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Dispatch)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{receiver.server_address[1]}/lockstep"
    receiver.shutdown()
    receiver.server_close()


@pytest.fixture(scope="module")
def server(google: GoogleSandbox, graph: GraphSandbox, dispatch_webhook: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = {**google_env(google, LOCKSTEP_SYNC_POLL_SECONDS="2"), **graph_env(graph),
           "LOCKSTEP_NOTIFY_WEBHOOK_URL": dispatch_webhook, "LOCKSTEP_NOTIFY_WEBHOOK_SECRET": "s3cret"}
    with running_server(tmp_path_factory.mktemp("admin-browser"), "sqlite", extra_env=env) as started:
        create_admin(started.database, "boss", PASSWORD)
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def until(page: Page, check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Reload the page until ``check()`` holds: the panel is server-rendered, state changes behind it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
        page.reload()


def log_in(page: Page, server: LockstepServer, password: str = PASSWORD) -> Response:
    page.goto(server.url + "/admin/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", password)
    with page.expect_navigation() as navigation:
        page.click("button:has-text('Log in')")
    response = navigation.value
    assert response is not None
    return response


def test_add_tech_connect_google_and_see_a_conflict(page: Page, server: LockstepServer,
                                                    google: GoogleSandbox) -> None:
    p = page
    # Two more techs for the dashboard: Ben's Google grant gets revoked, Cy never connects.
    server.add_tech("ben")
    connect_google(server, google, "ben")
    google.revoke_refresh_token(email="ben@example.com")
    google.expire_access_tokens("ben@example.com")
    server.add_tech("cy")
    google.add_user("ana@example.com", "Ana Pereira", time_zone="America/New_York")
    google.add_calendar("ana@example.com", "Team jobs")

    p.goto(server.url + "/admin/")
    assert "/admin/login" in p.url
    shot(p, "login")
    assert log_in(p, server).status == 200 and p.url.endswith("/admin/")

    # Add a tech.
    p.click("nav >> text=Techs")
    p.click("text=Add a tech")
    p.fill("input[name=username]", "ana")
    p.fill("input[name=name]", "Ana Pereira")
    p.fill("input[name=email]", "ana@example.com")
    p.select_option("select[name=timezone]", "America/New_York")
    p.fill("input[name=hours_sat]", "09:00-12:00")
    p.fill("input[name=buffer_after]", "15")
    shot(p, "tech-new")
    p.click("button:has-text('Add tech')")
    password = p.inner_text("#new-password").strip()
    assert re.fullmatch(r"[a-z0-9]{4}(-[a-z0-9]{4}){3}", password)
    assert requests.request("PROPFIND", f"{server.dav_url}ana/", auth=("ana", password),
                            headers={"Depth": "0"}).status_code == 207
    shot(p, "iphone")

    # Connect Google: the real consent flow, through the emulator's consent page.
    p.goto(f"{server.url}/admin/techs/ana/connections")
    p.click("button:has-text('Connect Google')")
    assert "Google Accounts (sandbox)" in p.title()
    assert p.input_value("select[name=email]") == "ana@example.com"
    shot(p, "google-consent")
    p.click("button:has-text('Allow')")
    assert "is now connected for ana" in p.inner_text("body")

    # Choose calendars: the primary and "Team jobs"; bookings stay in the primary.
    p.goto(f"{server.url}/admin/techs/ana/connections")
    until(p, lambda: p.locator("text=Team jobs").count(), "the calendar list")
    p.check("input[name=selection][value=chosen]")
    p.check("input[aria-label='sync Team jobs']")
    p.click("button:has-text('Save calendar choice')")
    assert "syncing 2 calendar(s)" in p.inner_text(".message.notice")
    until(p, lambda: p.locator("code:has-text('/dav/ana/google-team-jobs/')").count(), "the Team jobs mirror")
    shot(p, "connections")

    # The dashboard shows the connection ok, with a last success.
    p.goto(server.url + "/admin/")
    row = "tr[data-tech=ana][data-provider=google]"
    until(p, lambda: "state-ok" in (p.get_attribute(row, "class") or "")
          and p.inner_text(f"{row} td.lag") != "never", "the connection to be ok")
    until(p, lambda: "needs_reauth" in (p.get_attribute("tr[data-tech=ben]", "class") or ""),
          "Ben's revoked grant to show")
    assert "trouble" in p.get_attribute("tr[data-tech=ben]", "class")
    assert "invalid_grant" in p.inner_text("tr[data-tech=ben] td.error-text")
    assert p.get_attribute("tr[data-tech=cy]", "class") == "state-not_connected"
    shot(p, "dashboard")

    # An API token from the panel; the secret is shown once.
    p.click("nav >> text=API tokens")
    p.fill("input[name=name]", "booking-app")
    p.select_option("select[name=scope]", "bookings")
    p.click("button:has-text('Create token')")
    bearer = p.inner_text("#bearer").split("Bearer ", 1)[1].strip()
    shot(p, "tokens")

    # A booking, then an overlapping personal event created on the Google side.
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=15, minute=0, second=0, microsecond=0)
    booked = requests.post(server.url + "/api/v1/bookings", headers={"Authorization": f"Bearer {bearer}"},
                           json={"tech": "ana", "start": f"{day:%Y-%m-%dT%H:%M:%SZ}",
                                 "end": f"{day + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
                                 "summary": "Replace water heater", "location": "12 Elm St"})
    assert booked.status_code == 201, booked.text
    google.create_event("ana@example.com", {
        "summary": "Dentist",
        "start": {"dateTime": f"{day + timedelta(minutes=30):%Y-%m-%dT%H:%M:%SZ}"},
        "end": {"dateTime": f"{day + timedelta(minutes=90):%Y-%m-%dT%H:%M:%SZ}"}})

    p.click("nav >> text=Conflicts")
    card = "article.conflict[data-tech=ana]"
    until(p, lambda: p.locator(card).count(), "the conflict in the panel")
    booking_side = p.inner_text(f"{card} section.booking")
    personal_side = p.inner_text(f"{card} section.personal")
    local = day.astimezone(ZoneInfo("America/New_York"))
    assert "Replace water heater" in booking_side and f"{local:%Y-%m-%d %H:%M}" in booking_side
    assert "Dentist" in personal_side and f"{local + timedelta(minutes=30):%H:%M}" in personal_side
    shot(p, "conflicts")
    p.fill(f"{card} input[name=note]", "Ana moves the dentist")
    p.click(f"{card} button:has-text('Mark resolved')")
    # count() does not wait for the page a click loads: each check waits for it.
    until(p, lambda: p.locator(card).count() == 0, "the resolved conflict to leave the open list")
    p.click(".subnav a:has-text('Resolved')")
    until(p, lambda: p.locator(card).count() == 1, "the conflict in the resolved list")

    # The booking reached Google: its sync status says so.
    p.click("nav >> text=Bookings")
    until(p, lambda: p.locator("text=google: synced").count(), "the booking synced to Google")
    assert "Replace water heater" in p.inner_text("main")
    shot(p, "bookings")

    p.click("nav >> text=Notifications")
    until(p, lambda: p.locator("tr.kind-conflict").count(), "the conflict notification")
    until(p, lambda: p.locator("tr.delivery-sent:has-text('conflict')").count(), "the webhook delivery")
    shot(p, "notifications")

    p.goto(f"{server.url}/admin/techs/ana")
    assert p.input_value("select[name=timezone]") == "America/New_York"
    assert p.input_value("input[name=hours_sat]") == "09:00-12:00"
    shot(p, "tech-edit")

    p.click("nav >> text=Audit log")
    shot(p, "audit")
    with server.database.read() as session:
        done = {(e.actor, e.action, e.target) for e in session.scalars(select(AuditEntry))}
    assert {("boss", "tech.create", "ana"), ("boss", "connection.link", "ana"), ("boss", "calendars.choose", "ana"),
            ("boss", "token.create", "booking-app"), ("boss", "conflict.resolve", "ana")} <= done


def test_connect_outlook(browser: Browser, server: LockstepServer, graph: GraphSandbox) -> None:
    """Connect Outlook runs MSAL's auth-code flow through the Graph emulator's consent page."""
    graph.add_user("eve@example.com", time_zone="UTC")
    server.add_tech("eve")
    # The emulator serves HTTPS with its own test CA, which this browser does not know.
    context = browser.new_context(viewport={"width": 1280, "height": 860}, ignore_https_errors=True)
    context.set_default_timeout(15_000)
    p = context.new_page()
    try:
        assert log_in(p, server).status == 200
        p.goto(f"{server.url}/admin/techs/eve/connections")
        p.click("button:has-text('Connect Outlook')")
        assert "Microsoft (sandbox)" in p.title()
        with p.expect_navigation(url=re.compile(r".*/oauth/microsoft/callback.*")):
            p.click("button:has-text('Accept')")  # then the emulator's form_post page submits itself
        assert "is now connected for eve" in p.inner_text("body")
        p.goto(f"{server.url}/admin/")
        until(p, lambda: "state-ok" in (p.get_attribute("tr[data-tech=eve][data-provider=microsoft]", "class")
                                        or "")
              and p.inner_text("tr[data-tech=eve][data-provider=microsoft] td.lag") != "never",
              "the Outlook connection to be ok")
    finally:
        context.close()


def test_add_caldav_account(page: Page, server: LockstepServer,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CalDAV form against a real second server (a stock Radicale, like iCloud or Fastmail)."""
    from tests.support.caldav_env import radicale_server

    with radicale_server(tmp_path_factory.mktemp("remote-caldav")) as remote:
        remote.new_calendar("Personal")
        server.add_tech("dee")
        assert log_in(page, server).status == 200
        p = page
        p.goto(f"{server.url}/admin/techs/dee/connections")
        p.click("summary:has-text('Add CalDAV account')")
        p.fill("input[name=url]", remote.url)
        p.fill("input[name=account]", remote.username)
        p.fill("input[name=password]", "not-the-app-password")
        p.click("button:has-text('Add CalDAV account')")
        assert "refused the user name or password" in p.inner_text(".message.error")
        with server.database.read() as session:
            assert not session.scalars(select(Connection).where(Connection.provider == "caldav")).all()
        assert p.input_value("input[name=url]") == remote.url  # kept open and filled for a second try
        p.fill("input[name=password]", remote.password)
        p.click("button:has-text('Add CalDAV account')")
        assert "CalDAV account connected" in p.inner_text(".message.notice")
        until(p, lambda: p.locator("code:has-text('/dav/dee/caldav-')").count(), "the CalDAV mirror")
        shot(p, "connections-caldav")
        with server.database.read() as session:
            (connection,) = session.scalars(select(Connection).where(Connection.provider == "caldav")).all()
            assert remote.password not in connection.credentials  # encrypted at rest
        p.click("button:has-text('Disconnect CalDAV account')")
        assert "disconnected" in p.inner_text(".message.notice")
        with server.database.read() as session:
            assert not session.scalars(select(Connection).where(Connection.provider == "caldav")).all()


def test_post_without_csrf_token_is_refused(server: LockstepServer) -> None:
    session = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      session.get(server.url + "/admin/login").text).group(1)
    logged_in = session.post(server.url + "/admin/login", allow_redirects=False,
                             data={"username": "boss", "password": PASSWORD, "csrf_token": token})
    assert logged_in.status_code == 303
    refused = session.post(server.url + "/admin/tokens", data={"name": "sneaky", "scope": "bookings"})
    assert refused.status_code == 400 and "CSRF" in refused.text
    with server.database.read() as db:
        assert db.scalar(select(ApiToken).where(ApiToken.name == "sneaky")) is None
    fresh = re.search(r'name="csrf_token" value="([^"]+)"',  # the login started a new session
                      session.get(server.url + "/admin/tokens").text).group(1)
    accepted = session.post(server.url + "/admin/tokens", data={"name": "legit", "scope": "freebusy",
                                                                "csrf_token": fresh})
    assert accepted.status_code == 200 and 'id="bearer"' in accepted.text


def test_wrong_passwords_are_rate_limited(page: Page, server: LockstepServer) -> None:
    for _ in range(5):
        response = log_in(page, server, "wrong password")
        assert response.status == 401
        assert "Wrong user name or password" in page.inner_text(".message.error")
    response = log_in(page, server, PASSWORD)
    assert response.status == 429
    assert "Too many failed logins" in page.inner_text(".message.error")
    shot(page, "login-rate-limited")


def fits(page: Page, width: int = 375) -> bool:
    """Nothing sticks out sideways: the page needs no horizontal scrolling."""
    wide = page.evaluate("document.documentElement.scrollWidth")
    if wide > width:
        culprits = page.evaluate(f"""[...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > {width})
            .slice(0, 5).map(e => e.tagName + '.' + e.className + ': ' + e.textContent.slice(0, 60))""")
        print(f"page is {wide}px wide; widest elements: {culprits}")
    return bool(wide <= width)


def test_dashboard_on_a_phone(browser: Browser, server: LockstepServer) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    page = context.new_page()
    try:
        # A phone has its own address in real life; here the rate limit of the test above must not
        # apply, so this user name has its own budget.
        create_admin(server.database, "phone-boss", PASSWORD)
        page.goto(server.url + "/admin/")
        page.fill("input[name=username]", "phone-boss")
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('Log in')")
        page.wait_for_selector("h1:has-text('Sync health')")
        if not page.locator("tr[data-tech]").count():  # run on its own: one tech to show
            server.add_tech("solo")
            page.reload()
        assert fits(page), "the dashboard is wider than the phone"
        row = page.locator("tr[data-tech]").first
        box = row.bounding_box()
        assert box is not None and box["width"] <= 375
        assert row.locator("td[data-label=State]").is_visible()
        shot(page, "dashboard-phone")
        page.goto(server.url + "/admin/conflicts?state=resolved")
        assert fits(page), "the conflicts page is wider than the phone"
        shot(page, "conflicts-phone")
    finally:
        context.close()
