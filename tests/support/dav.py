"""Raw WebDAV/CalDAV requests and XML reading, as a phone would send them."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import requests

NS = {"d": "DAV:", "c": "urn:ietf:params:xml:ns:caldav", "cs": "http://calendarserver.org/ns/"}


@dataclass(frozen=True)
class Response:
    href: str
    status: str
    props: dict[str, ET.Element]


def multistatus(text: str) -> list[Response]:
    """Every <response> with its 200 properties (or its status when it has no propstat)."""
    root = ET.fromstring(text)
    out = []
    for response in root.findall("d:response", NS):
        href = response.findtext("d:href", default="", namespaces=NS)
        status = response.findtext("d:status", default="", namespaces=NS)
        props: dict[str, ET.Element] = {}
        for propstat in response.findall("d:propstat", NS):
            if " 200 " in (propstat.findtext("d:status", default="", namespaces=NS) or ""):
                prop = propstat.find("d:prop", NS)
                for child in list(prop) if prop is not None else []:
                    props[child.tag] = child
                status = status or "HTTP/1.1 200 OK"
        out.append(Response(href, status, props))
    return out


def sync_token(text: str) -> str:
    return ET.fromstring(text).findtext("d:sync-token", default="", namespaces=NS)


def tag(ns: str, name: str) -> str:
    return "{%s}%s" % (NS[ns], name)


def event_ics(uid: str | None = None, summary: str = "Job", start: str = "20261201T170000Z",
              end: str = "20261201T180000Z") -> str:
    uid = uid or str(uuid.uuid4())
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Lockstep tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\n"
        f"DTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:{summary}\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def propfind(session: requests.Session, url: str, body: str, depth: str = "0") -> requests.Response:
    return session.request(
        "PROPFIND", url, data=body.encode(),
        headers={"Depth": depth, "Content-Type": "application/xml; charset=utf-8"},
    )


def report(session: requests.Session, url: str, body: str, depth: str = "1") -> requests.Response:
    return session.request(
        "REPORT", url, data=body.encode(),
        headers={"Depth": depth, "Content-Type": "application/xml; charset=utf-8"},
    )


def sync_collection_body(token: str = "") -> str:
    return (
        '<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:">'
        f"<d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>"
        "<d:prop><d:getetag/></d:prop></d:sync-collection>"
    )


def multiget_body(hrefs: list[str]) -> str:
    refs = "".join(f"<d:href>{h}</d:href>" for h in hrefs)
    return (
        '<?xml version="1.0"?><c:calendar-multiget xmlns:d="DAV:" '
        'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/>'
        f"</d:prop>{refs}</c:calendar-multiget>"
    )
