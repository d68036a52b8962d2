"""API keys of the gateway: stored hashed, with scopes and an optional per-key rate limit.

A key file (`USERLLM_API_KEYS_FILE`, JSON) lists `{"name", "sha256", "scopes", "rate_per_s"}` entries;
the secret itself is shown once, by `python -m service.auth create`, and never stored or logged.
Clients send `Authorization: Bearer <key>` (or `X-API-Key: <key>`). Scopes:

| scope    | allows                                                       |
|----------|--------------------------------------------------------------|
| `ingest` | `POST /events`                                               |
| `read`   | `POST /recommend`, `POST /generate`, `GET /users/{user_id}`  |
| `admin`  | `DELETE /users/{user_id}`, and `/metrics` when so configured |

Missing or unknown key -> 401, key without the scope -> 403, past its `rate_per_s` -> 429 with
`Retry-After` (a one-second window counted in Redis, so every gateway replica shares it). Turning
authentication off takes an explicit `USERLLM_AUTH_DISABLED=true` (the embedded local stack does it
and says so).

    python -m service.auth create --file keys.json --name ingest-bot --scopes ingest --rate 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from service.errors import ServiceError
from service.keys import Keys

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "ullm_"


class Unauthenticated(ServiceError):
    status_code = 401

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403


class RateLimited(ServiceError):
    status_code = 429

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and the entry."""


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]
    rate_per_s: float | None = None  # None: no limit

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes),
                "rate_per_s": self.rate_per_s}  # fmt: skip


class KeyRing:
    """The configured keys, looked up by the SHA-256 of the presented secret."""

    def __init__(self, keys: list[ApiKey]):
        self.by_hash = {k.sha256: k for k in keys}

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise KeyFileError(f"{path}: no such key file") from exc
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
        entries = raw.get("keys") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise KeyFileError(f'{path}: expected {{"keys": [...]}}')
        keys, names = [], set()
        for i, e in enumerate(entries):
            where = f"{path}: keys[{i}]"
            if not isinstance(e, dict):
                raise KeyFileError(f"{where}: not an object")
            name, digest, scopes, rate = e.get("name"), e.get("sha256"), e.get("scopes"), e.get("rate_per_s")
            if not isinstance(name, str) or not name or name in names:
                raise KeyFileError(f"{where}.name: a non-empty name used once is required")
            hexdigits = isinstance(digest, str) and all(c in "0123456789abcdef" for c in digest)
            if not isinstance(digest, str) or len(digest) != 64 or not hexdigits:
                raise KeyFileError(f"{where}.sha256: 64 lowercase hex digits required")
            if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
                raise KeyFileError(f"{where}.scopes: a non-empty list of {', '.join(SCOPES)} required")
            number = isinstance(rate, int | float) and not isinstance(rate, bool)
            if rate is not None and (not number or rate <= 0):
                raise KeyFileError(f"{where}.rate_per_s: a positive number or null required")
            names.add(name)
            keys.append(ApiKey(name, digest, frozenset(scopes), None if rate is None else float(rate)))
        return cls(keys)

    def identify(self, secret: str | None) -> ApiKey:
        if not secret:
            raise Unauthenticated("an API key is required (Authorization: Bearer <key>)")
        key = self.by_hash.get(hash_key(secret))
        if key is None:
            raise Unauthenticated("unknown API key")
        return key


def presented_key(headers: Any) -> str | None:
    """The secret from `Authorization: Bearer ...` or `X-API-Key`."""
    auth = headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


async def check_rate(redis: aioredis.Redis, keys: Keys, key: ApiKey) -> None:
    """Fixed one-second window per key, shared by every gateway through Redis."""
    if key.rate_per_s is None:
        return
    second = int(time.time())
    counter = f"{keys.base}:rate:{key.name}:{second}"
    pipe = redis.pipeline(transaction=False)
    pipe.incr(counter)
    pipe.expire(counter, 2)
    count, _ = await pipe.execute()
    if count > key.rate_per_s:
        raise RateLimited(f"API key {key.name!r} is limited to {key.rate_per_s:g} requests a second")


def authorize(ring: KeyRing, headers: Any, scope: str) -> ApiKey:
    key = ring.identify(presented_key(headers))
    if scope not in key.scopes:
        raise Forbidden(f"API key {key.name!r} lacks the scope {scope!r}")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="API keys: print a new secret once, store its hash.")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="add a key to the key file (created if missing)")
    create.add_argument("--file", type=Path, required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    create.add_argument("--rate", type=float, default=None, help="requests a second (default: no limit)")
    args = parser.parse_args(argv)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    if not scopes or any(s not in SCOPES for s in scopes):
        parser.error(f"--scopes: choose from {', '.join(SCOPES)}")
    existing: list[dict[str, Any]] = []
    if args.file.exists():
        try:
            KeyRing.load(args.file)
        except KeyFileError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        existing = json.loads(args.file.read_text())["keys"]
    if any(e["name"] == args.name for e in existing):
        sys.stderr.write(f"error: {args.file}: a key named {args.name!r} exists\n")
        return 2
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = ApiKey(args.name, hash_key(secret), frozenset(scopes), args.rate).to_dict()
    args.file.write_text(json.dumps({"keys": [*existing, entry]}, indent=2) + "\n")
    args.file.chmod(0o600)
    sys.stdout.write(secret + "\n")
    sys.stderr.write(
        f"key {args.name!r} ({','.join(scopes)}) added to {args.file}; the secret above is not stored\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
