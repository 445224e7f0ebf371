"""HTTPS served directly (``lockstep serve --tls-cert/--tls-key``) and HTTPS through a
reverse proxy (``[server] trust_forwarded``), against a real ``lockstep serve``.

The certificates are made here: a throw-away CA and a server certificate for
127.0.0.1 signed by it, so the client really verifies the chain (``verify=CA``).
They come from the ``cryptography`` package when it is installed, otherwise from
the ``openssl`` command; the TLS tests skip when neither is available.
"""

from __future__ import annotations

import datetime
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.support.dav import event_ics, multistatus, propfind, tag
from tests.support.lockstep_server import LockstepServer, running_server

PRINCIPAL_BODY = "<propfind xmlns='DAV:'><prop><current-user-principal/></prop></propfind>"
LISTING_BODY = "<propfind xmlns='DAV:'><prop><resourcetype/><displayname/></prop></propfind>"
PUBLIC_HOST = "cal.example.com"


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients trust
    cert: Path  # the server's certificate (PEM)
    key: Path  # its private key (PEM)


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        _openssl_certificates(directory, paths)
    else:
        _cryptography_certificates(paths)
    return paths


def _cryptography_certificates(paths: Certificates) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: x509.Name | None, public_key, signing_key, ca: bool):  # type: ignore[no-untyped-def]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("Lockstep test CA", None, ca_key.public_key(), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("127.0.0.1", ca_cert.subject, server_key.public_key(), ca_key, ca=False)
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _openssl_certificates(directory: Path, paths: Certificates) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ca_key, csr = directory / "ca.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(paths.ca), "-days", "2", "-subj", "/CN=Lockstep test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(paths.key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(paths.ca), "-CAkey", str(ca_key),
        "-set_serial", "0x" + datetime.datetime.now().strftime("%Y%m%d%H%M%S%f"),
        "-days", "2", "-sha256", "-extfile", str(extensions), "-out", str(paths.cert))


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(
    backend: str, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LockstepServer]:
    """``lockstep serve --tls-cert ... --tls-key ...``: HTTPS only, on the one port."""
    start_args = ("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key))
    with running_server(
        tmp_path_factory.mktemp(f"tls-{backend}"), backend,
        start_args=start_args, scheme="https", verify=str(certificates.ca),
    ) as started:
        yield started


@pytest.fixture(scope="module")
def proxied_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    """A server configured to sit behind a reverse proxy (trust_forwarded on)."""
    with running_server(
        tmp_path_factory.mktemp(f"proxied-{backend}"), backend,
        extra_env={"LOCKSTEP_SERVER_TRUST_FORWARDED": "true"},
    ) as started:
        yield started


def _session(user: str, password: str, verify: bool | str = True) -> requests.Session:
    session = requests.Session()
    session.auth = (user, password)
    session.verify = verify
    # Else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment would win over session.verify.
    session.trust_env = False
    return session


# --- (a) HTTPS served directly ------------------------------------------------------------


def test_https_propfind_with_basic_auth(tls_server: LockstepServer, certificates: Certificates) -> None:
    assert tls_server.dav_url.startswith("https://")
    user, password = tls_server.add_tech()
    session = _session(user, password, verify=str(certificates.ca))

    response = propfind(session, tls_server.dav_url, PRINCIPAL_BODY)
    assert response.status_code == 207, response.text
    principal = multistatus(response.text)[0].props[tag("d", "current-user-principal")]
    assert principal.findtext("{DAV:}href") == f"/dav/{user}/"

    wrong = propfind(_session(user, "not-the-password", str(certificates.ca)), tls_server.dav_url, PRINCIPAL_BODY)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")

    health = requests.get(tls_server.url + "/healthz", verify=str(certificates.ca), timeout=10)
    assert health.json() == {"status": "ok"}


def test_https_certificate_is_really_checked(tls_server: LockstepServer) -> None:
    """The client trusts the generated CA only: without it the handshake fails."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.url + "/healthz", timeout=10)  # system CAs only


def test_plain_http_on_the_tls_port_gets_no_content(tls_server: LockstepServer) -> None:
    """cheroot hangs up (or answers 400): nothing is served in clear text."""
    try:
        response = requests.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=10)
    except requests.ConnectionError:
        return
    assert response.status_code == 400
    assert "status" not in response.text


def test_tls_from_environment(backend: str, certificates: Certificates, tmp_path: Path) -> None:
    """What a container does: LOCKSTEP_SERVER_TLS_CERT/KEY instead of the flags."""
    env = {"LOCKSTEP_SERVER_TLS_CERT": str(certificates.cert), "LOCKSTEP_SERVER_TLS_KEY": str(certificates.key)}
    with running_server(tmp_path, backend, extra_env=env, scheme="https", verify=str(certificates.ca)) as server:
        response = requests.get(server.url + "/healthz", verify=str(certificates.ca), timeout=10)
        assert response.json() == {"status": "ok"}


def test_tls_cert_without_key_is_refused(tmp_path: Path, certificates: Certificates) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(tmp_path), "serve", "--port", "0",
         "--tls-cert", str(certificates.cert)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--tls-key" in result.stderr


# --- (b) behind a reverse proxy -----------------------------------------------------------


def test_well_known_redirect_resolves_to_https_behind_the_proxy(proxied_server: LockstepServer) -> None:
    """The Location is a path, so the client resolves it against the https URL it used:
    never an http:// URL that would send an iPhone's Basic credentials in clear."""
    response = requests.request(
        "PROPFIND", proxied_server.url + "/.well-known/caldav", allow_redirects=False, timeout=10,
        headers={"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 301
    assert not response.headers["Location"].startswith("http:")
    resolved = urljoin(f"https://{PUBLIC_HOST}/.well-known/caldav", response.headers["Location"])
    assert resolved == f"https://{PUBLIC_HOST}/dav/"


# What the proxy sends, and the Destination URL the client puts in a MOVE (always absolute
# in practice): MOVE succeeds only when the server agrees on scheme, host and port.
PROXY_CASES = {
    "proto, Host without port": ({"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"}, f"https://{PUBLIC_HOST}"),
    "proto and X-Forwarded-Host": (
        {"X-Forwarded-Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"}, f"https://{PUBLIC_HOST}"
    ),
    "Host with port": ({"Host": f"{PUBLIC_HOST}:8443", "X-Forwarded-Proto": "https"}, f"https://{PUBLIC_HOST}:8443"),
    "X-Forwarded-Port": (
        {"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"},
        f"https://{PUBLIC_HOST}:8443",
    ),
    "plain http proxy": ({"Host": PUBLIC_HOST, "X-Forwarded-Proto": "http"}, f"http://{PUBLIC_HOST}"),
}


@pytest.mark.parametrize("case", PROXY_CASES)
def test_move_with_the_public_destination_url(proxied_server: LockstepServer, case: str) -> None:
    headers, public_base = PROXY_CASES[case]
    user, password = proxied_server.add_tech()
    session = _session(user, password)
    source = f"{proxied_server.dav_url}{user}/bookings/job.ics"
    assert session.put(source, data=event_ics(), headers={"Content-Type": "text/calendar"}).status_code == 201

    moved = session.request(
        "MOVE", source, headers={**headers, "Destination": f"{public_base}/dav/{user}/bookings/moved.ics"}
    )
    assert moved.status_code in (201, 204), moved.text
    assert session.get(f"{proxied_server.dav_url}{user}/bookings/moved.ics").status_code == 200
    assert session.get(source).status_code == 404


def test_forwarded_headers_ignored_unless_trusted(server: LockstepServer) -> None:
    """Default config (trust_forwarded off): a client cannot claim https or another host."""
    user, password = server.add_tech()
    session = _session(user, password)
    source = f"{server.dav_url}{user}/bookings/job.ics"
    assert session.put(source, data=event_ics(), headers={"Content-Type": "text/calendar"}).status_code == 201

    claimed = {"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "other.example"}
    refused = session.request(
        "MOVE", source, headers={**claimed, "Destination": f"https://other.example/dav/{user}/bookings/moved.ics"}
    )
    assert refused.status_code == 502  # "remote destination": the claim was not believed
    accepted = session.request(
        "MOVE", source, headers={**claimed, "Destination": f"http://{PUBLIC_HOST}:{server.port}/dav/{user}/bookings/moved.ics"}
    )
    assert accepted.status_code in (201, 204), accepted.text


def _mobileconfig(session: requests.Session, url: str, headers: dict[str, str]) -> dict[str, object]:
    response = session.get(url + ".mobileconfig", headers=headers)
    if response.status_code == 404:
        pytest.skip("this server offers no /dav/.mobileconfig")
    assert response.status_code == 200, response.text
    return plistlib.loads(response.content)["PayloadContent"][0]


def test_iphone_profile_names_the_public_https_endpoint(proxied_server: LockstepServer, server: LockstepServer) -> None:
    headers = {"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"}
    profile = _mobileconfig(_session(*proxied_server.add_tech()), proxied_server.dav_url, headers)
    assert (profile["CalDAVHostName"], profile["CalDAVPort"], profile["CalDAVUseSSL"]) == (PUBLIC_HOST, 443, True)

    untrusted = _mobileconfig(_session(*server.add_tech()), server.dav_url, headers)
    assert untrusted["CalDAVUseSSL"] is False
    assert untrusted["CalDAVPort"] == server.port


# --- (c) X-Script-Name is not the client's to set -----------------------------------------


@pytest.mark.parametrize("which", ["server", "proxied_server"])
@pytest.mark.parametrize("script_name", ["/evil", "evil", "/dav/x"])
def test_client_x_script_name_does_not_change_hrefs(
    request: pytest.FixtureRequest, backend: str, which: str, script_name: str
) -> None:
    target: LockstepServer = request.getfixturevalue(which)
    user, password = target.add_tech()
    session = _session(user, password)
    session.headers["X-Script-Name"] = script_name

    listing = propfind(session, f"{target.dav_url}{user}/", LISTING_BODY, depth="1")
    assert listing.status_code == 207, listing.text
    hrefs = [response.href for response in multistatus(listing.text)]
    assert f"/dav/{user}/" in hrefs and f"/dav/{user}/bookings/" in hrefs
    assert all(href.startswith(f"/dav/{user}/") for href in hrefs), hrefs

    principal = propfind(session, target.dav_url, PRINCIPAL_BODY)
    href = multistatus(principal.text)[0].props[tag("d", "current-user-principal")].findtext("{DAV:}href")
    assert href == f"/dav/{user}/"

    redirect = session.get(target.url + "/.well-known/caldav", allow_redirects=False)
    assert redirect.headers["Location"] == "/dav/"
