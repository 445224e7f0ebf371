"""RFC 6638 ``schedule-calendar-transp`` survives a round trip through Radicale.

Radicale keeps only an element's text, so ``<C:transparent/>`` would be stored
as "". Requests are rewritten to carry the value as text ("transparent" /
"opaque"), and PROPFIND answers turn the text back into the element.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

CALDAV = "urn:ietf:params:xml:ns:caldav"
TRANSP = f"{{{CALDAV}}}schedule-calendar-transp"
_STORED = re.compile(rb"<(\w+):schedule-calendar-transp>(transparent|opaque)</\1:schedule-calendar-transp>")


def rewrite_request(body: bytes) -> bytes:
    if b"schedule-calendar-transp" not in body:
        return body
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return body  # Radicale answers malformed XML itself
    changed = False
    for element in root.iter(TRANSP):
        for child in list(element):
            if child.tag in (f"{{{CALDAV}}}transparent", f"{{{CALDAV}}}opaque"):
                element.text = child.tag.split("}", 1)[1]
                element.remove(child)
                changed = True
    return ET.tostring(root, encoding="utf-8") if changed else body


def rewrite_response(body: bytes) -> bytes:
    if b"schedule-calendar-transp>" not in body:
        return body
    return _STORED.sub(
        lambda m: b"<%s:schedule-calendar-transp><%s:%s /></%s:schedule-calendar-transp>"
        % (m.group(1), m.group(1), m.group(2), m.group(1)),
        body,
    )
