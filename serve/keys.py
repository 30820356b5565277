"""API keys: created once, stored only as a hash, checked in constant time.

A key is `msk_` + 43 random URL-safe characters (256 bits). Only its sha256 is kept, with the
key's name, role, own rate limit and creation/revocation times; a key this random needs no salt
or slow hash (nothing can be guessed from the hash). The store is either the `api_keys` table of
the prediction store's database (the default: the CLI and the service share it) or a JSON file
named by `MEDISCALE_API_KEYS_FILE` (a mounted Kubernetes Secret; read-only for the service).

`Keyring` is what the service asks: it keeps the records for `ttl_s` (a revocation reaches every
replica and proxy within that time) and compares a presented key's hash with every active
record, without stopping at the first match, so timing says nothing about which keys exist.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

if TYPE_CHECKING:
    from data.config import Settings
    from serve.store import PredictionStore

log = logging.getLogger(__name__)

ROLES = ("predict", "feedback", "read", "admin")
KEY_PREFIX = "msk_"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
KEYRING_TTL_S = 5.0
STALE_LIMIT_S = 300.0  # a key store that stops answering: the last records serve this long


class KeyRequestError(ValueError):
    """A key request that cannot be met (bad name or role, duplicate, unknown name)."""


class KeyStoreUnavailable(RuntimeError):
    """The key store did not answer (and no recent copy of it is held)."""


@dataclass(frozen=True)
class ApiKey:
    """One key's record: never the key itself."""

    name: str
    role: str
    sha256: str
    created_at: str
    rate_per_minute: int | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check(name: str, role: str, rate_per_minute: int | None) -> None:
    if not re.fullmatch(NAME_PATTERN, name or ""):
        raise KeyRequestError(
            f"name: 1-64 characters of letters, digits, '.', '_' or '-' (got {len(name or '')})"
        )
    if role not in ROLES:
        raise KeyRequestError(f"role: one of {', '.join(ROLES)}")
    if rate_per_minute is not None and rate_per_minute < 1:
        raise KeyRequestError("rate_per_minute: at least 1")


class KeySource(Protocol):
    """Where key records live."""

    def records(self) -> list[ApiKey]: ...
    def add(self, record: ApiKey) -> None: ...
    def revoke(self, name: str) -> ApiKey: ...


# --------------------------------------------------------------------------- the database table

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("rate_per_minute", sa.Integer),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("revoked_at", sa.String(32)),
)


class DatabaseKeys:
    """Key records in the prediction store's database (`api_keys`), created on first use. It
    uses its caller's store (one engine and pool per process, not one per reader)."""

    def __init__(self, store: PredictionStore):
        self.store = store
        with self.store.transaction() as conn:
            metadata.create_all(conn)

    def records(self) -> list[ApiKey]:
        from serve.store import StoreUnavailable

        try:
            with self.store.engine.connect() as conn:
                rows = conn.execute(sa.select(api_keys)).mappings().all()
        except sa.exc.DBAPIError as exc:
            raise StoreUnavailable(f"key store unavailable ({type(exc.orig).__name__})") from None
        return [ApiKey(**dict(r)) for r in rows]

    def add(self, record: ApiKey) -> None:
        with self.store.transaction() as conn:
            if conn.execute(sa.select(api_keys.c.name).where(api_keys.c.name == record.name)).first():
                raise KeyRequestError(
                    f"name: a key named {record.name!r} exists (revoke it or pick another name)"
                )
            conn.execute(api_keys.insert(), asdict(record))

    def revoke(self, name: str) -> ApiKey:
        with self.store.transaction() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).mappings().first()
            if row is None:
                raise KeyRequestError(f"name: no key named {name!r}")
            record = ApiKey(**dict(row))
            if record.active:
                record = replace(record, revoked_at=_now())
                conn.execute(
                    api_keys.update().where(api_keys.c.name == name).values(revoked_at=record.revoked_at)
                )
        return record


class FileKeys:
    """Key records in a JSON file (`{"keys": [...]}`), written atomically, readable by the owner only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[ApiKey]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            return [ApiKey(**item) for item in data.get("keys", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise KeyRequestError(f"{self.path.name}: not a key file ({type(exc).__name__})") from None

    def _write(self, records: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": [asdict(r) for r in records]}, handle, indent=2)
        os.replace(tmp, self.path)

    def add(self, record: ApiKey) -> None:
        records = self.records()
        if any(r.name == record.name for r in records):
            raise KeyRequestError(
                f"name: a key named {record.name!r} exists (revoke it or pick another name)"
            )
        self._write([*records, record])

    def revoke(self, name: str) -> ApiKey:
        records = self.records()
        for i, record in enumerate(records):
            if record.name == name:
                if record.active:
                    records[i] = replace(record, revoked_at=_now())
                    self._write(records)
                return records[i]
        raise KeyRequestError(f"name: no key named {name!r}")


def open_source(settings: Settings | None = None, store: PredictionStore | None = None) -> KeySource:
    """The key file when `MEDISCALE_API_KEYS_FILE` is set, else the table in `store`'s database
    (the caller's store; a new one on the settings' URL when not given)."""
    from data.config import Settings

    settings = settings or Settings.from_env()
    if settings.api_keys_file is not None:
        return FileKeys(settings.api_keys_file)
    if store is None:
        from serve.store import PredictionStore

        store = PredictionStore(settings.resolved_store_url())
    return DatabaseKeys(store)


def create(source: KeySource, name: str, role: str, rate_per_minute: int | None = None) -> tuple[ApiKey, str]:
    """A new key: its record (stored) and the key itself (returned once, never stored)."""
    _check(name, role, rate_per_minute)
    secret = new_secret()
    record = ApiKey(
        name=name, role=role, sha256=hash_key(secret), created_at=_now(), rate_per_minute=rate_per_minute
    )
    source.add(record)
    return record, secret


# --------------------------------------------------------------------------- checking keys


class Keyring:
    """The active keys of a source, cached for `ttl_s`; `find` is constant time in the key."""

    def __init__(self, source: KeySource, ttl_s: float = KEYRING_TTL_S):
        self.source = source
        self.ttl_s = ttl_s
        self._records: list[ApiKey] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def fresh(self) -> bool:
        """True while the cached records are young enough that `find` reads no store."""
        return self._records is not None and time.monotonic() - self._loaded_at < self.ttl_s

    def _current(self) -> list[ApiKey]:
        now = time.monotonic()
        if self._records is not None and now - self._loaded_at < self.ttl_s:
            return self._records
        with self._lock:
            if self._records is not None and time.monotonic() - self._loaded_at < self.ttl_s:
                return self._records
            try:
                self._records = [r for r in self.source.records() if r.active]
                self._loaded_at = time.monotonic()
            except Exception as exc:
                if self._records is None or now - self._loaded_at > STALE_LIMIT_S:
                    raise KeyStoreUnavailable(f"key store unavailable ({type(exc).__name__})") from None
                log.warning(
                    "key store unavailable (%s); using the keys read %.0f s ago",
                    type(exc).__name__,
                    now - self._loaded_at,
                )
            return self._records

    def find(self, secret: str | None) -> ApiKey | None:
        """The active record whose hash matches, or None. Every record is compared."""
        if not secret:
            return None
        presented = hash_key(secret)
        found = None
        for record in self._current():
            if hmac.compare_digest(presented, record.sha256):
                found = record
        return found
