"""Drive the real ``vdirsyncer`` CLI against a single CalDAV calendar collection.

The helpers here are server-agnostic: they only need the URL of one calendar
collection (e.g. ``http://127.0.0.1:PORT/dav/mike/bookings/``) plus HTTP Basic
credentials.  :func:`run_vdirsyncer_scenario` is the end-to-end scenario shared by
the stock-Radicale test and the Lockstep tests.

Server-side inspection and mutation deliberately use plain WebDAV/CalDAV
requests (PROPFIND Depth 1, GET, PUT with If-None-Match/If-Match, DELETE with
If-Match) so that the assertions do not depend on vdirsyncer itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests

PAIR_NAME = "calendar"
VDIRSYNCER_TIMEOUT = 300.0
HTTP_TIMEOUT = 30.0
DAV_NS = "DAV:"

_TZID = "America/Los_Angeles"

# Standard VTIMEZONE for America/Los_Angeles (US rules since 2007).
_VTIMEZONE_LA = "\r\n".join(
    [
        "BEGIN:VTIMEZONE",
        f"TZID:{_TZID}",
        "BEGIN:DAYLIGHT",
        "TZOFFSETFROM:-0800",
        "TZOFFSETTO:-0700",
        "TZNAME:PDT",
        "DTSTART:20070311T020000",
        "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU",
        "END:DAYLIGHT",
        "BEGIN:STANDARD",
        "TZOFFSETFROM:-0700",
        "TZOFFSETTO:-0800",
        "TZNAME:PST",
        "DTSTART:20071104T020000",
        "RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU",
        "END:STANDARD",
        "END:VTIMEZONE",
    ]
)

_UID_RE = re.compile(r"^UID:(.*)$", re.MULTILINE)
_SUMMARY_RE = re.compile(r"^SUMMARY:(.*)$", re.MULTILINE)


# --------------------------------------------------------------------------
# vdirsyncer CLI
# --------------------------------------------------------------------------


def vdirsyncer_binary() -> Path:
    """Return the ``vdirsyncer`` executable installed next to ``sys.executable``."""
    binary = Path(sys.executable).parent / "vdirsyncer"
    if not binary.exists():
        raise FileNotFoundError(f"vdirsyncer not found next to the interpreter: {binary}")
    return binary


def write_config(
    workdir: Path, caldav_url: str, username: str, password: str, local_dir: Path
) -> Path:
    """Write a vdirsyncer config syncing ``local_dir`` with one CalDAV collection.

    ``collections = null`` makes vdirsyncer use both storage locations as-is
    (no collection discovery below the URL).  Storage ``a`` is the local
    filesystem, ``b`` the server; conflicts resolve in favour of the server.
    Returns the path of the config file.
    """
    workdir = Path(workdir)
    local_dir = Path(local_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    # vdirsyncer's filesystem storage refuses to start (or prompts) if missing.
    local_dir.mkdir(parents=True, exist_ok=True)
    status_dir = workdir / "status"
    status_dir.mkdir(parents=True, exist_ok=True)

    def val(value: object) -> str:
        return json.dumps(value)

    text = "\n".join(
        [
            "[general]",
            f"status_path = {val(str(status_dir) + os.sep)}",
            "",
            f"[pair {PAIR_NAME}]",
            'a = "local"',
            'b = "remote"',
            "collections = null",
            'conflict_resolution = "b wins"',
            "",
            "[storage local]",
            'type = "filesystem"',
            f"path = {val(str(local_dir))}",
            'fileext = ".ics"',
            "",
            "[storage remote]",
            'type = "caldav"',
            f"url = {val(caldav_url)}",
            f"username = {val(username)}",
            f"password = {val(password)}",
            "",
        ]
    )
    config = workdir / "vdirsyncer.conf"
    config.write_text(text, encoding="utf-8")
    return config


def run_vdirsyncer(
    config: Path, *args: str, timeout: float = VDIRSYNCER_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``vdirsyncer -c CONFIG *args`` and return the completed process.

    Any interactive prompt (``discover`` asking to create a collection) is
    answered with ``y``.  Raises :class:`RuntimeError` with stdout/stderr if the
    command fails, times out, or logs an error while still exiting 0.
    """
    cmd = [str(vdirsyncer_binary()), "-c", str(config), *args]
    env = dict(os.environ)
    env.pop("VDIRSYNCER_CONFIG", None)
    try:
        proc = subprocess.run(
            cmd,
            input="y\n" * 20,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"{' '.join(cmd)} timed out after {timeout}s\n"
            f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        ) from exc
    # vdirsyncer logs to stderr; "error:" lines mean an item or pair failed.
    logged_error = any(
        line.lower().startswith(("error:", "critical:")) for line in proc.stderr.splitlines()
    )
    if proc.returncode != 0 or logged_error:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def discover_and_sync(config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``vdirsyncer discover`` (required once, even with ``collections = null``)
    followed by ``vdirsyncer sync``; return the sync process."""
    run_vdirsyncer(config, "discover", PAIR_NAME)
    return run_vdirsyncer(config, "sync", PAIR_NAME)


def sync(config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``vdirsyncer sync`` for the pair (``discover`` must have run before)."""
    return run_vdirsyncer(config, "sync", PAIR_NAME)


# --------------------------------------------------------------------------
# iCalendar helpers
# --------------------------------------------------------------------------


def make_uid(prefix: str = "lockstep-vds") -> str:
    """Return a fresh UID made only of vdirsyncer's href-safe characters."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _fold(line: str) -> str:
    """Fold a content line at 75 octets (RFC 5545 section 3.1)."""
    data = line.encode("utf-8")
    if len(data) <= 75:
        return line
    parts: list[str] = []
    chunk = b""
    limit = 75
    for ch in line:
        enc = ch.encode("utf-8")
        if len(chunk) + len(enc) > limit:
            parts.append(chunk.decode("utf-8"))
            chunk = b""
            limit = 74  # continuation lines start with a space
        chunk += enc
    parts.append(chunk.decode("utf-8"))
    return "\r\n ".join(parts)


def make_event_ics(
    uid: str,
    index: int,
    *,
    summary: str | None = None,
    sequence: int = 0,
    all_day: bool | None = None,
) -> str:
    """Build a realistic VCALENDAR with one VEVENT.

    Timed events use ``TZID=America/Los_Angeles`` with an embedded VTIMEZONE;
    every seventh event (or ``all_day=True``) is an all-day ``VALUE=DATE`` event.
    """
    if all_day is None:
        all_day = index % 7 == 3
    if summary is None:
        summary = f"Service visit #{index}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = date(2025, 3, 3) + timedelta(days=index % 120)
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Lockstep//vdirsyncer harness//EN",
        "CALSCALE:GREGORIAN",
    ]
    if not all_day:
        lines.append(_VTIMEZONE_LA)
    lines += [
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{stamp}",
        f"CREATED:{stamp}",
        f"LAST-MODIFIED:{stamp}",
        f"SEQUENCE:{sequence}",
    ]
    if all_day:
        lines += [
            f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
            f"DTEND;VALUE=DATE:{day + timedelta(days=1):%Y%m%d}",
            "TRANSP:TRANSPARENT",
        ]
    else:
        start = datetime(day.year, day.month, day.day, 8 + index % 9, (index * 15) % 60)
        end = start + timedelta(minutes=30 + 30 * (index % 4))
        lines += [
            f"DTSTART;TZID={_TZID}:{start:%Y%m%dT%H%M%S}",
            f"DTEND;TZID={_TZID}:{end:%Y%m%dT%H%M%S}",
            "TRANSP:OPAQUE",
        ]
    lines += [
        f"SUMMARY:{summary}",
        f"DESCRIPTION:Technician dispatch {index}\\, customer site {index % 17}.",
        f"LOCATION:{100 + index} Main St\\, Springfield",
        "STATUS:CONFIRMED",
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
    return "\r\n".join(_fold(line) if "\r\n" not in line else line for line in lines)


def extract_uid(ics: str) -> str:
    """Return the single UID of an iCalendar object (unfolding lines first)."""
    unfolded = re.sub(r"\r?\n[ \t]", "", ics)
    uids = {m.strip() for m in _UID_RE.findall(unfolded)}
    if len(uids) != 1:
        raise ValueError(f"expected exactly one UID, found {sorted(uids)!r}")
    return uids.pop()


def extract_summary(ics: str) -> str:
    """Return the first SUMMARY value of an iCalendar object (unfolded)."""
    unfolded = re.sub(r"\r?\n[ \t]", "", ics)
    match = _SUMMARY_RE.search(unfolded)
    if match is None:
        raise ValueError("no SUMMARY found")
    return match.group(1).strip()


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` via a temp file and rename (new inode, so vdirsyncer sees a change)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def create_local_events(local_dir: Path, count: int, *, start_index: int = 0) -> list[str]:
    """Create ``count`` event files ``<uid>.ics`` in ``local_dir``; return their UIDs."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    uids: list[str] = []
    for i in range(start_index, start_index + count):
        uid = make_uid()
        _atomic_write(local_dir / f"{uid}.ics", make_event_ics(uid, i))
        uids.append(uid)
    return uids


def _local_files(local_dir: Path) -> list[Path]:
    return sorted(p for p in Path(local_dir).iterdir() if p.is_file() and p.suffix == ".ics")


def read_local_events(local_dir: Path) -> dict[str, str]:
    """Return ``{uid: ics_text}`` for all ``*.ics`` files; raise on duplicate UIDs."""
    result: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in _local_files(local_dir):
        text = path.read_text(encoding="utf-8")
        uid = extract_uid(text)
        if uid in result:
            raise AssertionError(f"duplicate UID {uid!r} locally: {where[uid]} and {path}")
        result[uid] = text
        where[uid] = path
    return result


def local_path_for_uid(local_dir: Path, uid: str) -> Path:
    """Return the local file holding ``uid`` (its name need not equal the UID)."""
    for path in _local_files(local_dir):
        if extract_uid(path.read_text(encoding="utf-8")) == uid:
            return path
    raise KeyError(uid)


def edit_local_event(local_dir: Path, uid: str, new_summary: str) -> None:
    """Replace the SUMMARY of a local event (and bump SEQUENCE/LAST-MODIFIED)."""
    path = local_path_for_uid(local_dir, uid)
    _atomic_write(path, _edited(path.read_text(encoding="utf-8"), new_summary))


def delete_local_event(local_dir: Path, uid: str) -> None:
    """Delete the local file holding ``uid``."""
    local_path_for_uid(local_dir, uid).unlink()


def _edited(ics: str, new_summary: str) -> str:
    """Return ``ics`` with a new SUMMARY, SEQUENCE+1 and fresh LAST-MODIFIED/DTSTAMP."""
    unfolded = re.sub(r"\r?\n[ \t]", "", ics)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: list[str] = []
    for line in re.split(r"\r?\n", unfolded):
        if line.startswith("SUMMARY:"):
            line = f"SUMMARY:{new_summary}"
        elif line.startswith("SEQUENCE:"):
            line = f"SEQUENCE:{int(line.split(':', 1)[1]) + 1}"
        elif line.startswith("LAST-MODIFIED:"):
            line = f"LAST-MODIFIED:{stamp}"
        elif line.startswith("DTSTAMP:"):
            line = f"DTSTAMP:{stamp}"
        out.append(_fold(line) if line else line)
    return "\r\n".join(out)


# --------------------------------------------------------------------------
# Server-side (plain HTTP) helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerItem:
    """One calendar object resource as seen on the server."""

    href: str
    etag: str
    text: str


def _collection_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _session(username: str, password: str) -> requests.Session:
    session = requests.Session()
    session.auth = (username, password)
    return session


def list_server_hrefs(calendar_url: str, username: str, password: str) -> dict[str, str]:
    """PROPFIND Depth 1 on the collection; return ``{absolute_url: etag}`` of members."""
    url = _collection_url(calendar_url)
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:resourcetype/>'
        "<d:getcontenttype/></d:prop></d:propfind>"
    )
    with _session(username, password) as s:
        resp = s.request(
            "PROPFIND",
            url,
            data=body.encode(),
            headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
            timeout=HTTP_TIMEOUT,
        )
    if resp.status_code != 207:
        raise AssertionError(f"PROPFIND {url} -> {resp.status_code}: {resp.text[:500]}")
    root = ET.fromstring(resp.content)
    own_path = unquote(urlsplit(url).path).rstrip("/")
    members: dict[str, str] = {}
    for response in root.findall(f"{{{DAV_NS}}}response"):
        href = response.findtext(f"{{{DAV_NS}}}href", default="").strip()
        absolute = urljoin(url, href)
        if unquote(urlsplit(absolute).path).rstrip("/") == own_path:
            continue
        etag = None
        is_collection = False
        for propstat in response.findall(f"{{{DAV_NS}}}propstat"):
            status = propstat.findtext(f"{{{DAV_NS}}}status", default="")
            if " 200 " not in f"{status} ":
                continue
            prop = propstat.find(f"{{{DAV_NS}}}prop")
            if prop is None:
                continue
            if prop.find(f"{{{DAV_NS}}}resourcetype/{{{DAV_NS}}}collection") is not None:
                is_collection = True
            etag = prop.findtext(f"{{{DAV_NS}}}getetag") or etag
        if is_collection:
            continue
        if not etag:
            raise AssertionError(f"member {href!r} has no getetag in PROPFIND response")
        members[absolute] = etag
    return members


def read_server_events(calendar_url: str, username: str, password: str) -> dict[str, ServerItem]:
    """GET every member of the collection; return ``{uid: ServerItem}``.

    Raises if two resources carry the same UID (a duplicate).
    """
    members = list_server_hrefs(calendar_url, username, password)
    result: dict[str, ServerItem] = {}
    with _session(username, password) as s:
        for href in sorted(members):
            resp = s.get(href, timeout=HTTP_TIMEOUT)
            if resp.status_code != 200:
                raise AssertionError(f"GET {href} -> {resp.status_code}: {resp.text[:300]}")
            resp.encoding = resp.encoding or "utf-8"
            text = resp.text
            uid = extract_uid(text)
            if uid in result:
                raise AssertionError(
                    f"duplicate UID {uid!r} on server: {result[uid].href} and {href}"
                )
            etag = resp.headers.get("ETag") or members[href]
            result[uid] = ServerItem(href=href, etag=etag, text=text)
    return result


def put_server_event(
    calendar_url: str, username: str, password: str, uid: str, ics: str
) -> str:
    """Create ``<uid>.ics`` on the server with ``If-None-Match: *``; return its URL."""
    href = _collection_url(calendar_url) + f"{uid}.ics"
    with _session(username, password) as s:
        resp = s.put(
            href,
            data=ics.encode("utf-8"),
            headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
            timeout=HTTP_TIMEOUT,
        )
    if resp.status_code not in (201, 204):
        raise AssertionError(f"PUT {href} -> {resp.status_code}: {resp.text[:300]}")
    return href


def edit_server_event(
    calendar_url: str, username: str, password: str, uid: str, new_summary: str
) -> None:
    """Change the SUMMARY of a server event via GET + PUT with ``If-Match``."""
    item = read_server_events(calendar_url, username, password)[uid]
    with _session(username, password) as s:
        resp = s.put(
            item.href,
            data=_edited(item.text, new_summary).encode("utf-8"),
            headers={"Content-Type": "text/calendar; charset=utf-8", "If-Match": item.etag},
            timeout=HTTP_TIMEOUT,
        )
    if resp.status_code not in (200, 201, 204):
        raise AssertionError(f"PUT {item.href} -> {resp.status_code}: {resp.text[:300]}")


def delete_server_event(calendar_url: str, username: str, password: str, uid: str) -> None:
    """Delete a server event via DELETE with ``If-Match``."""
    item = read_server_events(calendar_url, username, password)[uid]
    with _session(username, password) as s:
        resp = s.delete(item.href, headers={"If-Match": item.etag}, timeout=HTTP_TIMEOUT)
    if resp.status_code not in (200, 204):
        raise AssertionError(f"DELETE {item.href} -> {resp.status_code}: {resp.text[:300]}")


# --------------------------------------------------------------------------
# End-to-end scenario
# --------------------------------------------------------------------------


def _assert_same(label: str, actual: set[str], expected: set[str]) -> None:
    if actual != expected:
        missing = sorted(expected - actual)
        extra = sorted(actual - expected)
        raise AssertionError(
            f"{label}: {len(actual)} UIDs, expected {len(expected)}; "
            f"missing={missing[:10]} (n={len(missing)}) extra={extra[:10]} (n={len(extra)})"
        )


def run_vdirsyncer_scenario(
    calendar_url: str, username: str, password: str, workdir: Path
) -> None:
    """Two-way sync scenario between a local vdir and ``calendar_url`` (must exist, empty).

    1. 200 events created locally -> sync -> exactly those 200 on the server.
    2. 5 events PUT on the server -> sync -> all 205 locally and on the server.
    3. Edit one event and delete another on each side -> sync -> both sides hold
       the same 203 UIDs, no duplicates, edits and deletions propagated.
    4. A further sync is a no-op (still identical, no changes).
    """
    workdir = Path(workdir)
    local_dir = workdir / "local"
    config = write_config(workdir, calendar_url, username, password, local_dir)

    assert read_server_events(calendar_url, username, password) == {}, (
        "calendar collection must start empty"
    )

    # 1. bulk upload
    local_uids = create_local_events(local_dir, 200)
    assert len(set(local_uids)) == 200
    discover_and_sync(config)
    server = read_server_events(calendar_url, username, password)
    _assert_same("server after initial upload", set(server), set(local_uids))
    _assert_same("local after initial upload", set(read_local_events(local_dir)), set(local_uids))
    assert len(list_server_hrefs(calendar_url, username, password)) == 200
    for uid in local_uids[:5] + local_uids[-5:]:
        assert extract_summary(server[uid].text) == extract_summary(
            read_local_events(local_dir)[uid]
        )

    # 2. server-side creations
    server_uids = [make_uid("lockstep-srv") for _ in range(5)]
    for i, uid in enumerate(server_uids):
        put_server_event(
            calendar_url, username, password, uid,
            make_event_ics(uid, 1000 + i, summary=f"Server-created job {i}"),
        )
    sync(config)
    expected = set(local_uids) | set(server_uids)
    local = read_local_events(local_dir)
    _assert_same("local after server creations", set(local), expected)
    _assert_same(
        "server after server creations",
        set(read_server_events(calendar_url, username, password)),
        expected,
    )
    assert len(_local_files(local_dir)) == 205
    for i, uid in enumerate(server_uids):
        assert extract_summary(local[uid]) == f"Server-created job {i}"

    # 3. one edit + one delete on each side, on distinct events
    local_edit, local_delete = local_uids[10], local_uids[20]
    server_edit, server_delete = local_uids[30], server_uids[1]
    local_summary = "Edited locally: reschedule"
    server_summary = "Edited on server: technician swap"
    edit_local_event(local_dir, local_edit, local_summary)
    delete_local_event(local_dir, local_delete)
    edit_server_event(calendar_url, username, password, server_edit, server_summary)
    delete_server_event(calendar_url, username, password, server_delete)
    sync(config)

    expected -= {local_delete, server_delete}
    assert len(expected) == 203
    local = read_local_events(local_dir)
    server = read_server_events(calendar_url, username, password)
    _assert_same("local after edits/deletes", set(local), expected)
    _assert_same("server after edits/deletes", set(server), expected)
    assert len(_local_files(local_dir)) == 203
    assert len(list_server_hrefs(calendar_url, username, password)) == 203
    assert extract_summary(server[local_edit].text) == local_summary
    assert extract_summary(local[local_edit]) == local_summary
    assert extract_summary(local[server_edit]) == server_summary
    assert extract_summary(server[server_edit].text) == server_summary
    for uid in expected:
        assert extract_summary(local[uid]) == extract_summary(server[uid].text), uid

    # 4. steady state: another sync changes nothing
    before_etags = {uid: item.etag for uid, item in server.items()}
    sync(config)
    server_after = read_server_events(calendar_url, username, password)
    _assert_same("server after idle sync", set(server_after), expected)
    _assert_same("local after idle sync", set(read_local_events(local_dir)), expected)
    assert {uid: item.etag for uid, item in server_after.items()} == before_etags
