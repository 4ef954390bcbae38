"""A local HTTPS server for download tests, with a throw-away certificate authority.

Downloads refuse plain http:// and always verify TLS, so the tests serve files over HTTPS
with a self-signed certificate for 127.0.0.1 and point requests at it through
``REQUESTS_CA_BUNDLE`` (the same way a user behind a company proxy adds their CA).
"""

from __future__ import annotations

import datetime
import functools
import gzip
import ipaddress
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1/localhost and its key; return paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Server:
    """Serves ``root`` over HTTPS; counts GETs; special paths misbehave on purpose.

    ``/bomb``: a gzip-encoded body that inflates to ``bomb_size`` bytes of zeros.
    ``/drip``: a body sent one byte every ``drip_delay`` seconds.
    """

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        self.root = root
        self.gets: Counter = Counter()
        self.bomb_size = 64 << 20
        self.drip_delay = 0.05
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0].lstrip("/")
                server.gets[path] += 1
                special: dict[str, Callable[[], None]] = {
                    "bomb": self._bomb,
                    "drip": self._drip,
                }
                if path in special:
                    special[path]()
                else:
                    super().do_GET()

            def _bomb(self) -> None:
                body = gzip.compress(bytes(server.bomb_size), compresslevel=9)
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client stopped reading: that is the point

            def _drip(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(server.drip_delay)
                except OSError:
                    pass

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, name: str) -> str:
        # A query string like Zenodo's, to check it does not leak into cache file names.
        return f"https://127.0.0.1:{self.port}/{name}?download=1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tmp_path, certificate, monkeypatch):
    """An HTTPS server over ``tmp_path / "srv"`` that requests trusts for this test only."""
    root = tmp_path / "srv"
    root.mkdir()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    srv = Server(root, *certificate)
    yield srv
    srv.close()
