"""The key file of ``imageclf serve --api-keys FILE``: names, hashes, quotas.

One key per line, ``NAME:SHA256`` (the hex SHA-256 of the key, never the key itself),
optionally followed by the key's own quota: ``alice:9f86...08 rate=300/min burst=20``.
Blank lines and ``#`` comments are skipped. ``imageclf serve keys add NAME --file FILE``
makes a random key, appends its line and prints the key once; by hand,
``echo "bob:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)" >> FILE``.

A fast hash is enough: generated keys are 256-bit random strings, which no dictionary
can find from their hash, and a slow hash would cost CPU on every request. The file is
read once, in the server's master process, before any worker starts; change it, then
restart the server.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError
from ..fileio import printable, read_file_capped
from .quota import Quota, SharedBuckets

ANONYMOUS = "anonymous"  # no credentials sent
INVALID = "invalid"  # credentials sent, but not a key of the file
RESERVED_NAMES = frozenset({ANONYMOUS, INVALID})
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEYS = 1000  # names are metric labels: a bounded set
MAX_KEY_FILE_BYTES = 1024 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")
_RATE = re.compile(r"(\d+(?:\.\d+)?)(?:/(s|min|h))?")
_PER = {None: 1.0, "s": 1.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class ApiKey:
    """One line of the key file: a name, the key's SHA-256, its quota (None: unlimited)."""

    name: str
    digest: bytes
    quota: Quota | None


def key_digest(key: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes: what the file stores (as hex) and what is compared."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_rate(text: str) -> float | None:
    """Requests per second from ``5``, ``5/s``, ``300/min`` or ``1000/h``; ``none``: no limit."""
    if text.lower() == "none":
        return None
    match = _RATE.fullmatch(text.strip())
    rate = float(match.group(1)) / _PER[match.group(2)] if match else 0.0
    if rate <= 0 or not math.isfinite(rate):
        raise UserInputError(
            "a rate must be a positive number like 5, 5/s, 300/min or 1000/h, or none; "
            f"got {printable(text)!r}"
        )
    return rate


def make_quota(rate: float | None, burst: int | None) -> Quota | None:
    """The bucket for a rate (per second) and burst; burst defaults to one second's worth."""
    if rate is None:
        return None
    if burst is not None and burst < 1:
        raise UserInputError(f"a burst must be a whole number of at least 1, got {burst}")
    return Quota(rate=rate, burst=burst if burst is not None else max(1, math.ceil(rate)))


def _parse_options(fields: list[str], default: Quota | None, where: str) -> Quota | None:
    """A line's own ``rate=`` and ``burst=`` (either replaces the default's)."""
    options: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or name not in ("rate", "burst") or name in options:
            raise UserInputError(
                f"{where}: expected rate=RATE or burst=N after the hash, got {printable(field)!r}"
            )
        options[name] = value
    if not options:
        return default
    try:
        rate = parse_rate(options["rate"]) if "rate" in options else default and default.rate
        burst = int(options["burst"]) if "burst" in options else None
        if rate is None and burst is not None:
            raise UserInputError("burst=N needs a rate (rate=RATE here, or --key-rate)")
        if burst is None and "rate" not in options and default is not None:
            burst = default.burst
        return make_quota(rate, burst)
    except ValueError:
        raise UserInputError(f"{where}: burst must be a whole number") from None
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None


def parse_key_line(line: str, default: Quota | None, where: str) -> ApiKey:
    """``NAME:SHA256 [rate=R] [burst=N]`` -> ApiKey, or one error naming the line."""
    head, *fields = line.split()
    name, sep, digest = head.partition(":")
    if not sep or not KEY_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise UserInputError(
            f"{where}: expected NAME:SHA256 with a NAME of letters, digits, '.', '_' or '-' "
            f"(at most 64, not {' or '.join(sorted(RESERVED_NAMES))})"
        )
    if not _HASH.fullmatch(digest):
        raise UserInputError(
            f"{where}: the hash must be 64 lowercase hex digits (sha256sum's output)"
        )
    return ApiKey(name, bytes.fromhex(digest), _parse_options(fields, default, where))


def parse_key_file(text: str, source: str, default: Quota | None = None) -> list[ApiKey]:
    """Every key of a key file's text; blank lines and ``#`` comments are skipped."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = parse_key_line(line, default, f"{source} line {number}")
        if key.name in names or key.digest in digests:
            what = "name" if key.name in names else "key"
            raise UserInputError(
                f"{source} line {number}: the same {what} is already on an earlier line"
            )
        names.add(key.name)
        digests.add(key.digest)
        keys.append(key)
    if len(keys) > MAX_KEYS:
        raise UserInputError(f"{source} has {len(keys)} keys; at most {MAX_KEYS}")
    return keys


def read_key_text(path: str | os.PathLike) -> str:
    """A key file's text (UTF-8, at most 1 MB), or one ``UserInputError`` saying why not."""
    data = read_file_capped(path, MAX_KEY_FILE_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{printable(path)} is not UTF-8 text") from None


def read_key_file(path: str | os.PathLike, default: Quota | None = None) -> list[ApiKey]:
    """The keys of ``path``, or one ``UserInputError`` naming the file (and line)."""
    return parse_key_file(read_key_text(path), printable(path), default)


class KeyRing:
    """The keys a server accepts and their buckets. Made once before gunicorn forks its
    workers, so every worker shares the same buckets (``quota.SharedBuckets``)."""

    def __init__(self, keys: list[ApiKey], source: str = "keys") -> None:
        if not keys:
            raise UserInputError(
                f"{source} holds no key: add one with "
                f"'imageclf serve keys add NAME --file {source}'"
            )
        self.keys = tuple(keys)
        self.names = tuple(k.name for k in keys)
        self._buckets = SharedBuckets(len(keys))

    @classmethod
    def load(
        cls, path: str | os.PathLike, rate: float | None = None, burst: int | None = None
    ) -> KeyRing:
        """The key file at ``path``; ``rate``/``burst``: the quota of keys that set none."""
        return cls(read_key_file(path, make_quota(rate, burst)), printable(path))

    def identify(self, key: str) -> ApiKey | None:
        """The entry whose hash matches ``key``'s. Every stored hash is compared, in
        constant time each, so neither the position nor a common prefix shows in timing."""
        digest = key_digest(key)
        found = None
        for entry in self.keys:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found

    def take(self, entry: ApiKey) -> float:
        """0 if ``entry`` may make a request now (one token spent), else seconds to wait."""
        if entry.quota is None:
            return 0.0
        return self._buckets.take(self.keys.index(entry), entry.quota)


# ---------------------------------------------------------------- making keys
def new_key() -> str:
    """A random key: 32 bytes from the OS, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def add_key(
    path: str | os.PathLike, name: str, rate: str | None = None, burst: int | None = None
) -> str:
    """Append a new key named ``name`` to the key file (made 0600 if new); return the key.

    The file and the new line are checked first, as the server will read them, so a line
    is never added that would stop the server from starting."""
    if not KEY_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise UserInputError(
            f"a key name is 1-64 letters, digits, '.', '_' or '-' (not anonymous or invalid); "
            f"got {printable(name)!r}"
        )
    path = Path(path)
    text = read_key_text(path) if path.exists() else ""
    existing = parse_key_file(text, printable(path)) if text.strip() else []
    if any(k.name == name for k in existing):
        raise UserInputError(f"{printable(path)} already has a key named {name!r}")
    key = new_key()
    fields = [f"{name}:{key_digest(key).hex()}"]
    fields += [f"rate={rate}"] if rate is not None else []
    fields += [f"burst={burst}"] if burst is not None else []
    line = " ".join(fields)
    parse_key_line(line, None, "the new key")
    prefix = "\n" if text and not text.endswith("\n") else ""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(prefix + line + "\n")
    return key
