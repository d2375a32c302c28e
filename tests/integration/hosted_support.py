"""TLS for the stand-in of a hosted endpoint (tests/fakes/hosted_endpoint.py): a CA the test makes
with trustme, and a certificate it signs for 127.0.0.1."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls(directory: Path) -> Tls:
    """A CA, and a certificate it signs for 127.0.0.1 (an IP SAN: the endpoint's host)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    tls = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(tls.ca))
    issued.private_key_pem.write_to_path(str(tls.key))
    tls.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return tls
