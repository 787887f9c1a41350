"""Who is calling: principals, the credentials that name them, their tenant.

A principals file (TOML, the `auth_file` setting) maps credentials to
principals:

    [principals.alice]
    tenant = "acme"                         # whose threads these are (default: the name)
    token_sha256 = ["9f86d081884c7d65..."]  # SHA-256 (hex) of each bearer token it may use
    client_cert_names = ["alice.acme.test"] # or a TLS client certificate's CN or DNS name
    trust_roots = ["/srv/work/acme"]        # folders StartThread may trust for it

Only hashes of tokens are kept, never the tokens. The file is read again
when it changes, so a token rotates without a restart: add the new token's
hash, move the clients over, remove the old hash. `python -m spindle.auth`
makes a new token and prints it with its hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spindle.errors import Unauthenticated
from spindle.settings import SettingsError
from spindle.tls import file_stamp

log = logging.getLogger(__name__)

TOKEN_PREFIX = "spx_"
# ErrorInfo reasons of a call refused for its credentials.
CREDENTIALS_REQUIRED = "CREDENTIALS_REQUIRED"
CREDENTIALS_INVALID = "CREDENTIALS_INVALID"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")
# How often a request may cause the file's metadata to be checked.
RELOAD_CHECK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `trust_roots` None means: any folder."""

    name: str
    tenant: str
    trust_roots: tuple[Path, ...] | None = None


# The caller when no authentication is configured (a service on loopback).
LOCAL = Principal("local", "")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A bearer token with 256 bits from the system's random source."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class _Table:
    by_hash: dict[str, Principal] = field(default_factory=dict)
    by_cert_name: dict[str, Principal] = field(default_factory=dict)


def parse_principals(text: str, origin: str) -> _Table:
    """The principals a file's text declares; SettingsError naming what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{origin}: {exc}") from None
    principals = data.get("principals", {})
    if not isinstance(principals, dict) or set(data) - {"principals"}:
        raise SettingsError(f"{origin}: expected only [principals.NAME] tables")
    table = _Table()
    for name, entry in principals.items():
        where = f"{origin}: principals.{name}"
        if not _NAME.fullmatch(name) or not isinstance(entry, dict):
            raise SettingsError(f"{where}: a name of letters, digits, . _ @ - and a table")
        unknown = set(entry) - {"tenant", "token_sha256", "client_cert_names", "trust_roots"}
        if unknown:
            raise SettingsError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        tenant = entry.get("tenant", name)
        hashes = _strings(entry, "token_sha256", where)
        names = _strings(entry, "client_cert_names", where)
        roots = _strings(entry, "trust_roots", where)
        if not isinstance(tenant, str) or not _NAME.fullmatch(tenant):
            raise SettingsError(f"{where}: tenant must be letters, digits, . _ @ -")
        if not all(_SHA256_HEX.fullmatch(h) for h in hashes):
            raise SettingsError(f"{where}: token_sha256 holds 64 lowercase hex digits each")
        if not all(os.path.isabs(r) for r in roots):
            raise SettingsError(f"{where}: trust_roots must be absolute paths")
        principal = Principal(name, tenant, tuple(Path(os.path.normpath(r)) for r in roots))
        for digest in hashes:
            if digest in table.by_hash:
                raise SettingsError(f"{where}: a token hash is given twice")
            table.by_hash[digest] = principal
        for cert_name in names:
            table.by_cert_name[cert_name] = principal
    return table


def _strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{where}: {key} must be a list of strings")
    return value


class Principals:
    """The principals file, read again when it changes (checked at most once
    a second). A change that does not parse keeps the last good table and is
    logged, so a typo while editing locks nobody out."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._checked = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._table = self._read()  # at start, a bad file is a SettingsError

    def _read(self) -> _Table:
        stamp = file_stamp(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise SettingsError(f"{self.path}: cannot read: {reason}") from None
        table = parse_principals(text, str(self.path))
        self._stamp = stamp
        return table

    def _current(self) -> _Table:
        now = self._clock()
        if now - self._checked >= RELOAD_CHECK_SECONDS:
            self._checked = now
            stamp = file_stamp(self.path)
            if stamp is not None and stamp != self._stamp:
                try:
                    self._table = self._read()
                    log.info("reloaded the principals in %s", self.path)
                except SettingsError as exc:
                    log.warning("kept the previous principals: %s", exc)
        return self._table

    def by_token(self, token: str) -> Principal | None:
        return self._current().by_hash.get(token_hash(token))

    def by_cert_names(self, names: Sequence[str]) -> Principal | None:
        table = self._current()
        for name in names:
            if name in table.by_cert_name:
                return table.by_cert_name[name]
        return None


class Authenticator:
    """Turns a call's credentials into a principal. With no principals file
    every caller is `LOCAL` (allowed only on loopback, see the settings)."""

    def __init__(self, principals: Principals | None) -> None:
        self.principals = principals

    @property
    def required(self) -> bool:
        return self.principals is not None

    def authenticate(self, authorization: str | None, cert_names: Sequence[str]) -> Principal:
        if self.principals is None:
            return LOCAL
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization metadata must be `Bearer <token>`",
                    reason=CREDENTIALS_INVALID,
                )
            principal = self.principals.by_token(token.strip())
            if principal is None:
                raise Unauthenticated("the bearer token is not valid", reason=CREDENTIALS_INVALID)
            return principal
        if cert_names:
            principal = self.principals.by_cert_names(cert_names)
            if principal is None:
                raise Unauthenticated(
                    "the client certificate names no principal", reason=CREDENTIALS_INVALID
                )
            return principal
        raise Unauthenticated(
            "credentials are required: a bearer token in the `authorization` metadata, "
            "or a client certificate",
            reason=CREDENTIALS_REQUIRED,
        )


def init_secrets(folder: Path) -> Path:
    """Make the credentials of a deployment in `folder`, unless there already:
    a token for the thread-service to call the model-service with, the
    model-service's principals file naming it, a client token, and the
    thread-service's principals file naming that client (tenant "default",
    trust roots "/": the container's own folders). Files are 0600. Returns
    the client token's file."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    service, client = folder / "service-token", folder / "client-token"
    for token_file in (service, client):
        if not token_file.exists():
            _write_private(token_file, new_token() + "\n")
    service_hash = token_hash(service.read_text().strip())
    client_hash = token_hash(client.read_text().strip())
    files = {
        "model-principals.toml": (
            f'[principals.thread-service]\ntoken_sha256 = ["{service_hash}"]\n'
        ),
        "principals.toml": (
            '[principals.default]\ntenant = "default"\n'
            f'token_sha256 = ["{client_hash}"]\ntrust_roots = ["/"]\n'
        ),
    }
    for name, text in files.items():
        if not (folder / name).exists():
            _write_private(folder / name, text)
    return client


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m spindle.auth [NAME]`: print a new token and the line for its
    hash. `python -m spindle.auth init DIR`: see `init_secrets`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["init"] and len(args) == 2:
        client = init_secrets(Path(args[1]))
        print(f"credentials in {client.parent}; the client token is in {client}")
        return
    name = args[0] if args else "NAME"
    token = new_token()
    print(f"token (give it to the client, keep it secret): {token}")
    print("principals file entry:")
    print(f'[principals.{name}]\ntoken_sha256 = ["{token_hash(token)}"]')


if __name__ == "__main__":
    main()
