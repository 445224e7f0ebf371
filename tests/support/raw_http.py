"""Send HTTP/1.1 requests byte for byte: paths that clients would normalise
('..', '%2e%2e'), header values with CR/LF or NUL that client libraries refuse."""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def raw_request(base_url: str, method: str, target: str | bytes,
                headers: list[tuple[bytes | str, bytes | str]] | None = None,
                body: bytes = b"", *, content_length: int | None = None) -> RawResponse:
    """One request on a fresh connection (``Connection: close``); the answer read to EOF.

    ``content_length`` overrides the Content-Length sent (a lying client).
    """
    address = urlparse(base_url)
    lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1",
             b"Host: " + _bytes(address.netloc), b"Connection: close"]
    for name, value in headers or []:
        lines.append(_bytes(name) + b": " + _bytes(value))
    length = len(body) if content_length is None else content_length
    if body or content_length is not None:
        lines.append(b"Content-Length: " + str(length).encode())
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read that answer
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return _parse(b"".join(chunks))


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/"):
        raise AssertionError(f"not an HTTP response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = _dechunk(body)
    return RawResponse(status, headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out
