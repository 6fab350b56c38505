"""A TLS server context whose certificate is swapped in place (webhook server, intake).

The servers listen on one context for their whole life; a rotated certificate is loaded into
it (``flywheel.controllers.webhook_certificate``: from the managed Secret or a mounted
directory), so a rotation never closes the listener nor refuses a connection.
"""

from __future__ import annotations

import hashlib
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flywheel.stores.webhook_certificate import KeyPair


class ServingContext:
    """The server's TLS context; :meth:`load` swaps its certificate for the next handshakes.

    ``load_cert_chain`` on a context in use is what OpenSSL supports: connections already
    open keep the certificate they were made with. Handshakes run on the event loop's
    thread, as does ``load``, so none sees a certificate without its key.
    """

    def __init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._fingerprint: str | None = None

    @property
    def serving_fingerprint(self) -> str | None:
        return self._fingerprint

    def load(self, pair: KeyPair) -> None:
        # OpenSSL reads a chain only from files: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="flywheel-tls-") as directory:
            cert_file, key_file = Path(directory) / "tls.crt", Path(directory) / "tls.key"
            key_file.touch(mode=0o600)
            key_file.write_bytes(pair.key_pem)
            cert_file.write_bytes(pair.cert_pem)
            self.context.load_cert_chain(cert_file, key_file)
        der = x509.load_pem_x509_certificate(pair.cert_pem).public_bytes(serialization.Encoding.DER)
        self._fingerprint = hashlib.sha256(der).hexdigest()


__all__ = ["ServingContext"]
