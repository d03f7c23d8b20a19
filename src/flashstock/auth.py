"""Scoped API keys: who may call which route.

A key is a token ``fs_<id>_<secret>`` shown once when it is made
(``flashstock keys create``). flashstock stores only ``<id>:<scopes>:<sha256 of
the token>``, from ``FLASHSTOCK_API_KEYS`` (entries separated by commas or line
breaks) and/or the file ``FLASHSTOCK_API_KEYS_FILE`` (one entry a line, ``#``
comments). The secret is 32 random bytes, so a plain SHA-256 is enough: there
is no password to guess slowly, only 256 bits nobody can search.

A request carries the token as ``Authorization: Bearer <token>`` or
``X-API-Key: <token>``. The id inside the token picks the stored entry, then
the hashes are compared with :func:`hmac.compare_digest` (constant time). No
token or a wrong one: ``401``; a valid key without the route's scope: ``403``.

With no keys configured the API is open: fine on loopback and for the embedded
demo, and ``flashstock serve`` refuses to bind any other address that way
unless told ``--insecure-no-auth``.

Scopes (a key may hold several, written ``checkout+read``):

* ``checkout``: reservations and orders (``/v1/reservations…``, ``/v1/orders…``)
* ``ops``: counts, adjustments, item policies, imports (writes under
  ``/v1/stock…`` and ``/v1/items…``)
* ``read``: stock reads (``GET /v1/stock/{sku}``)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashstock.asgi import send_error

SCOPES = ("checkout", "ops", "read")
TOKEN_PREFIX = "fs_"
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# The ASGI scope entry routes read the caller's key id from.
SCOPE_KEY = "flashstock.key_id"
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


class KeyConfigError(ValueError):
    """The configured keys cannot be read (the message never holds a secret)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    scopes: frozenset[str]
    digest: str  # sha256 hex of the whole token


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_key(key_id: str, scopes: Iterable[str]) -> tuple[str, str]:
    """A fresh token and the config entry that admits it: ``(token, "id:scopes:sha256")``."""
    scope_set = _scopes(list(scopes), key_id)
    if not KEY_ID.match(key_id):
        raise KeyConfigError(f"key id {key_id!r}: 1-32 of a-z 0-9 and -, starting alphanumeric")
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return token, f"{key_id}:{'+'.join(s for s in SCOPES if s in scope_set)}:{digest(token)}"


def _scopes(names: list[str], key_id: str) -> frozenset[str]:
    bad = [s for s in names if s not in SCOPES]
    if bad or not names:
        given = f"{', '.join(map(repr, bad))} is not a scope; " if bad else "no scope given; "
        raise KeyConfigError(f"key {key_id!r}: {given}scopes are {', '.join(SCOPES)}")
    return frozenset(names)


def parse_entries(text: str, where: str) -> list[ApiKey]:
    """Entries ``id:scope[+scope]:sha256hex``, separated by commas or lines; ``#`` comments."""
    keys = []
    for n, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not KEY_ID.match(parts[0]) or not _HEX64.match(parts[2].lower()):
            # Never echo the entry: a secret pasted by mistake must not reach a log.
            raise KeyConfigError(f"{where}: entry {n} is not 'id:scope[+scope]:sha256 hex'")
        keys.append(ApiKey(parts[0], _scopes(parts[1].split("+"), parts[0]), parts[2].lower()))
    return keys


def load_keys(env_value: str | None, file: str | None) -> dict[str, ApiKey]:
    """Every configured key by id, from the environment value and the file; ids are unique."""
    keys: list[ApiKey] = []
    if env_value:
        keys += parse_entries(env_value, "FLASHSTOCK_API_KEYS")
    if file:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise KeyConfigError(f"cannot read the key file {file}: {exc.strerror}") from exc
        keys += parse_entries(text, file)
    out: dict[str, ApiKey] = {}
    for k in keys:
        if k.id in out:
            raise KeyConfigError(f"key id {k.id!r} is configured twice")
        out[k.id] = k
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs; None for the open ones (health, metrics, docs).

    Any other path under ``/v1`` needs a valid key of some scope (``""``), so
    an unknown route answers 401 before 404 and reveals nothing.
    """
    if not path.startswith("/v1/"):
        return None
    if path.startswith(("/v1/reservations", "/v1/orders")):
        return "checkout"
    if path.startswith("/v1/stock/") and method in ("GET", "HEAD"):
        return "read"
    if path.startswith(("/v1/stock", "/v1/items")):
        return "ops"
    return ""


def _token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return rest.strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class Authenticator:
    """Checks one request's token against the configured keys; no I/O, one hash."""

    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        self.keys = dict(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, token: str | None, scope: str) -> ApiKey | tuple[int, str, str]:
        """The caller's key, or ``(status, code, message)`` refusing it."""
        if not token:
            return 401, "unauthorized", "an API key is required (Authorization: Bearer <key>)"
        key_id = (
            token[len(TOKEN_PREFIX) :].split("_", 1)[0] if token.startswith(TOKEN_PREFIX) else ""
        )
        key = self.keys.get(key_id)
        # Compare even when the id is unknown, so timing tells nothing about which ids exist.
        if not hmac.compare_digest(digest(token), key.digest if key else _DUMMY) or key is None:
            return 401, "unauthorized", "the API key is not valid"
        if scope and scope not in key.scopes:
            return 403, "forbidden", f"this API key lacks the {scope!r} scope"
        return key


class AuthMiddleware:
    """ASGI middleware: refuses requests whose key does not allow the route, before any body is read.

    The caller's key id is left in ``scope[SCOPE_KEY]`` for routes that record it.
    """

    def __init__(self, app: Any, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.auth.enabled:
            need = required_scope(scope["method"], scope["path"])
            if need is not None:
                got = self.auth.check(_token(scope["headers"]), need)
                if isinstance(got, tuple):
                    status, code, message = got
                    challenge = [(b"www-authenticate", b'Bearer realm="flashstock"')]
                    await send_error(
                        send, status, code, message, challenge if status == 401 else ()
                    )
                    return
                scope[SCOPE_KEY] = got.id
        await self.app(scope, receive, send)


def key_id_of(scope: Mapping[str, Any]) -> str | None:
    """The id of the key that made this request (None when keys are off)."""
    return scope.get(SCOPE_KEY)
