"""TLS for both services, from PEM files that are read again when they change.

A server reads its certificate, key and (for mutual TLS) client CA when a
connection's handshake starts, if any file changed since, so a renewed
certificate is served without a restart. A client (the thread-service's
channel to the model-service) builds its credentials the same way; its
owner makes a new channel when `changed()` says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import grpc

from spindle.settings import SettingsError

log = logging.getLogger(__name__)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file's new content from its old: (inode, mtime, size);
    None when it cannot be looked at."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


class PemFiles:
    """A set of PEM files and the stamp (inode, mtime, size) they had when read."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [Path(p) for p in paths if p]
        self._stamp = self.stamp()

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(file_stamp(path) or (0, 0, 0) for path in self.paths)

    def changed(self) -> bool:
        """True once after the files changed on disk."""
        stamp = self.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


def read_pem(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{what} {path}: cannot read: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SettingsError(f"{what} {path}: not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """Credentials that serve `cert`, requiring client certificates signed by
    `client_ca` when it is given; reloaded when any of the files changes."""
    files = PemFiles([cert, key, client_ca])

    def configuration() -> object:
        return grpc.ssl_server_certificate_configuration(
            [(read_pem(key, "tls_key"), read_pem(cert, "tls_cert"))],
            read_pem(client_ca, "tls_client_ca") if client_ca else None,
        )

    def fetch() -> object | None:
        if not files.changed():
            return None
        try:
            fresh = configuration()
        except SettingsError as exc:  # a half-written renewal: keep serving the old one
            log.warning("kept the previous TLS certificate: %s", exc)
            return None
        log.info("reloaded the TLS certificate from %s", cert)
        return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=bool(client_ca)
    )


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Credentials of a TLS client: trust `ca` (else the system's roots) and
    present `cert` and `key` when given (mutual TLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA") if ca else None,
        private_key=read_pem(key, "client key") if key else None,
        certificate_chain=read_pem(cert, "client certificate") if cert else None,
    )
