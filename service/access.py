"""Optional access control for shared deployments (`API_ROUTER_ACCESS_KEYS_FILE`).

The file lists the client keys the router accepts, hashed, one per line:

    # team-a, issued 2025-01
    sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8

Blank lines and `#` comments are ignored. A hash is `sha256:` and the 64 hex digits of the
SHA-256 of the key's UTF-8 bytes: `printf %s "$KEY" | sha256sum`, or
`python -m service.access` (reads keys on stdin, one per line).

When the file is set, every `/v1/...` request must present one of the keys (`Authorization:
Bearer K` or `x-api-key: K`); anything else is 401 in the client's error shape, before the body
is read, before rate limiting, before the upstream. The upstream then always receives the
operator's `DEFAULT_API_KEY` (or no credential), never the client's key, and rate-limit buckets
are keyed by the access key's hash. The router never holds a client key in clear: only hashes
are loaded, and only hashes are compared. The file is read once at start (restart, or roll the
pods, to change it); an unreadable or malformed file stops the router with exit status 2.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from sanic import Request, Sanic

from .errors import Unauthorized
from .proxy.headers import client_credential
from .server.dispatch import plain_listener
from .settings import Settings, SettingsError

PREFIX = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
PROTECTED_PREFIX = "/v1/"


class AccessKeysError(SettingsError):
    """The keys file cannot be used; the message names the file and the line, never a key."""


def hash_key(key: str) -> str:
    return PREFIX + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class AccessKeys:
    """The set of accepted key hashes."""

    __slots__ = ("_hashes",)

    def __init__(self, hashes: frozenset[str]) -> None:
        self._hashes = hashes

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def hashes(self) -> frozenset[str]:
        return self._hashes

    @classmethod
    def load(cls, path: Path) -> AccessKeys:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AccessKeysError(
                f"API_ROUTER_ACCESS_KEYS_FILE {path}: cannot read ({e.__class__.__name__})"
            ) from None
        hashes = set()
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            value = line.lower()
            if _HASH.fullmatch(value) is None:
                # Never echo the line: an operator may have pasted a key in clear.
                raise AccessKeysError(
                    f"API_ROUTER_ACCESS_KEYS_FILE {path}, line {n}: expected sha256:<64 hex digits>"
                )
            hashes.add(value)
        if not hashes:
            raise AccessKeysError(f"API_ROUTER_ACCESS_KEYS_FILE {path}: no key hash in the file")
        return cls(frozenset(hashes))

    def admits(self, headers: Mapping[str, str]) -> bool:
        presented = client_credential(headers, None)
        return presented is not None and hash_key(presented) in self._hashes


def from_settings(settings: Settings) -> AccessKeys | None:
    """The keys the CLI read at start, else those of the file (an app made without the CLI)."""
    if settings.access_key_hashes is not None:
        return AccessKeys(settings.access_key_hashes)
    return AccessKeys.load(settings.access_keys_file) if settings.access_keys_file else None


def install(app: Sanic, keys: AccessKeys | None) -> None:
    """Check every /v1/ request as soon as it is routed (before its body is read). The relay
    reads the same keys from `app.ctx.access` (service.context)."""
    if keys is None:
        return

    @plain_listener(app, "http.routing.after")
    def _check(request: Request, **_: object) -> None:
        if (
            request.path.startswith(PROTECTED_PREFIX)
            and request.method != "OPTIONS"  # a CORS preflight never carries the key
            and not keys.admits(request.headers)
        ):
            raise Unauthorized()


def main() -> None:
    """`python -m service.access`: one `sha256:` line per key read from stdin."""
    for line in sys.stdin:
        key = line.rstrip("\r\n")
        if key:
            print(hash_key(key))


if __name__ == "__main__":
    main()
