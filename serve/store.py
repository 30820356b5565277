"""The prediction store: every served prediction, its shadow score and its outcome feedback.

Design choices, and why:

* SQLAlchemy Core on one Engine (a connection pool) per store. The store is thread-safe, so async
  Ray Serve replicas call it through `asyncio.to_thread`. The same code runs on SQLite (the default:
  `<data dir>/predictions.db`) and on PostgreSQL (pass a URL such as
  `postgresql+psycopg://user@host:5432/db`, or set MEDISCALE_STORE_URL).
* Every write is one transaction, committed before the method returns. A 200 response therefore
  means the row is stored. A batch (`log_predictions`) is stored completely or not at all.
* SQLite: the WAL journal lets readers run while a writer writes. `busy_timeout` makes a writer wait
  for the lock instead of failing. Writes open with `BEGIN IMMEDIATE`, so they take the write lock
  before reading; a read-then-write transaction cannot fail with SQLITE_BUSY part way through.
  Writers in one process are also serialized by a lock. With these settings, several replica
  processes can share one file. `synchronous` stays FULL, so a committed row is on disk.
* Three tables, one row per request in each:
  - `predictions` (unique request_id, indexed on created_at and variant): written once, never updated;
  - `prediction_shadows`: the other variant's score. A background task writes it after the response.
    Its key is request_id, a foreign key to `predictions`;
  - `prediction_feedback`: the observed outcome, also keyed by request_id.
  Separate tables keep the prediction row write-once: a late shadow or feedback write cannot change it.
* Policies:
  - a prediction whose request_id is already stored raises `DuplicateRequest` (HTTP 409) and the
    stored row is kept;
  - feedback for a request never predicted raises `UnknownRequest` (HTTP 404);
  - a second feedback for the same request raises `DuplicateFeedback` (HTTP 409) and the first is
    kept. Outcomes are facts; a database administrator corrects a wrong one;
  - a second shadow for the same request is ignored (`log_shadow` returns False), because background
    retries may repeat it. A shadow for an unknown request raises `UnknownRequest`.
* Privacy:
  - a patient appears only as `patient_key`, the HMAC-SHA256 of the patient id keyed with a secret
    salt (see `patient_key`);
  - note text is not stored unless `store_note_text=True`; only its length is kept;
  - feature keys that would carry note text or a raw patient id are dropped;
  - logs hold request ids and counts only, and SQL parameters are hidden from logs and error messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from data.config import STORE_FILE

# Every table's surrogate key (SQLite autoincrements only INTEGER PRIMARY KEY)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DB_FILENAME = STORE_FILE
URL_ENV = "MEDISCALE_STORE_URL"
SALT_ENV = "MEDISCALE_PATIENT_KEY_SALT"
# Development only: this salt is public, so keys made with it can be reversed by hashing candidate ids.
# Production sets MEDISCALE_PATIENT_KEY_SALT to a secret.
DEV_PATIENT_KEY_SALT = "mediscale-dev-patient-key-salt-NOT-SECRET"
# Well under the proxy's 30 s request timeout: a store that cannot take a write answers 503 while
# the client still waits, instead of the client timing out while its row commits.
SQLITE_BUSY_TIMEOUT_S = 10.0
PG_CONNECT_TIMEOUT_S = 5
PG_STATEMENT_TIMEOUT_MS = 10_000
MAX_ID_LENGTH = 128
# Feature keys never stored: string values under these names would be note text, and these ids are raw.
NOTE_TEXT_KEYS = frozenset({"note", "notes", "note_text", "text", "clinical_note"})
PATIENT_ID_KEYS = frozenset({"patient_id", "patient_nbr", "subject_id"})
_WRITE = "mediscale_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
_DDL_LOCK_KEY = 0x4D656469  # pg_advisory_xact_lock key that serializes create_all across processes


class StoreError(ValueError):
    """The prediction store refused a request (base of the specific errors below)."""


class UnknownRequest(StoreError):
    """Feedback or a shadow score for a request_id that was never predicted (HTTP 404)."""


class NoFeedbackYet(StoreError):
    """A correction for a prediction that has no outcome yet: POST the first one (HTTP 404)."""


class DuplicateFeedback(StoreError):
    """A second feedback for the same request_id; the first one is kept (HTTP 409)."""


class StoreUnavailable(StoreError):
    """The database did not take a write or a read (down, locked past the timeout, full): nothing of
    the call was committed (HTTP 503)."""


class DuplicateRequest(StoreError):
    """A prediction whose request_id is already stored; the stored row is kept (HTTP 409)."""

    def __init__(self, request_ids: Iterable[str]) -> None:
        self.request_ids = sorted(set(request_ids))
        shown = ", ".join(self.request_ids[:5]) + (" ..." if len(self.request_ids) > 5 else "")
        super().__init__(f"request_id already stored: {shown}")


# --------------------------------------------------------------------------- patient keys

_dev_salt_warned = False


def patient_key_salt() -> str:
    """The salt for patient keys: MEDISCALE_PATIENT_KEY_SALT, else (development only) the public
    development salt; production without it raises ConfigError."""
    from data.config import Settings

    global _dev_salt_warned
    settings = Settings.from_env()
    if settings.patient_key_salt is not None:
        return settings.patient_key_salt.get_secret_value()
    settings.check_production()
    if not _dev_salt_warned:
        _dev_salt_warned = True
        log.warning("%s is not set: patient keys use the public development salt", SALT_ENV)
    return DEV_PATIENT_KEY_SALT


def patient_key(patient_id: str | int, salt: str | None = None) -> str:
    """A stable pseudonym for a patient: hex HMAC-SHA256 of the id, keyed by a secret salt.

    The same id and salt always give the same key, so a patient's predictions can be grouped.
    Without the salt, the key cannot be matched back to an id.
    """
    text = str(patient_id).strip() if patient_id is not None else ""
    if not text:
        raise ValueError("patient_id is empty")
    key = patient_key_salt() if salt is None else salt
    if not key:
        raise ValueError("the patient key salt is empty")
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- records


@dataclass
class PredictionRecord:
    """One served prediction, as the serving layer hands it to the store."""

    request_id: str
    variant: str
    model_versions: dict[str, str]
    risk: float
    risk_band: str
    components: dict[str, float | None]
    features: dict[str, Any] = field(default_factory=dict)
    patient_key: str | None = None
    note_chars: int | None = None
    note_text: str | None = field(default=None, repr=False)  # kept only if the store has store_note_text
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        _check_id("variant", self.variant)
        try:
            self.risk = float(self.risk)
        except (TypeError, ValueError):
            raise StoreError(f"risk must be a number, got {type(self.risk).__name__}") from None
        if not (math.isfinite(self.risk) and 0.0 <= self.risk <= 1.0):
            raise StoreError(f"risk must be in [0, 1], got {self.risk}")
        if not isinstance(self.risk_band, str) or not self.risk_band:
            raise StoreError("risk_band must be a non-empty string")
        if self.note_chars is None and self.note_text is not None:
            self.note_chars = len(self.note_text)
        self.created_at = _as_utc(self.created_at)


def _unavailable(exc: Exception) -> str:
    """Why the database failed, by kind only (the statement and its parameters carry patient
    data and are never part of the message)."""
    orig = getattr(exc, "orig", None)
    original = type(orig).__name__ if orig is not None else type(exc).__name__
    return f"prediction store unavailable ({original})"


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise StoreError(f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters")


def _check_outcome(outcome: object, source: object) -> bool:
    if not (isinstance(outcome, bool) or outcome in (0, 1)):
        raise StoreError(f"outcome must be a boolean, got {type(outcome).__name__}")
    if source is not None and (not isinstance(source, str) or len(source) > 64):
        raise StoreError("source must be a string of at most 64 characters")
    return bool(outcome)


def _as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if not isinstance(moment, datetime):
        raise StoreError(f"created_at must be a datetime, got {type(moment).__name__}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _jsonable(value: Any) -> Any:
    """Plain JSON values. numpy scalars and arrays become Python values; NaN and inf become None."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _jsonable(float(value))
    if type(value).__name__ in {"NAType", "NaTType"}:  # pandas missing values
        return None
    if callable(getattr(value, "tolist", None)):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    raise StoreError(f"value of type {type(value).__name__} cannot be stored as JSON")


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


_dropped_feature_keys: set[str] = set()


def _clean_features(features: Mapping[str, Any] | None, keep_note_text: bool) -> dict[str, Any]:
    """Features to store: without raw patient ids, and without note text unless it is allowed."""
    cleaned: dict[str, Any] = {}
    for key, value in (features or {}).items():
        name = str(key)
        lowered = name.lower()
        if lowered in PATIENT_ID_KEYS or (
            not keep_note_text and lowered in NOTE_TEXT_KEYS and isinstance(value, str)
        ):
            if name not in _dropped_feature_keys:
                _dropped_feature_keys.add(name)
                log.warning("feature %r is not stored (patient id or note text)", name)
            continue
        cleaned[name] = value
    return _jsonable(cleaned)


# --------------------------------------------------------------------------- schema

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.String(MAX_ID_LENGTH)
_TIME = sa.DateTime(timezone=True)

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", _ID, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("variant", _ID, nullable=False),
    sa.Column("model_versions", _JSON, nullable=False),
    sa.Column("risk", sa.Float, nullable=False),
    sa.Column("risk_band", sa.String(32), nullable=False),
    sa.Column("components", _JSON, nullable=False),
    sa.Column("features", _JSON, nullable=False),
    sa.Column("patient_key", sa.String(64)),
    sa.Column("note_chars", sa.Integer),
    sa.Column("note_text", sa.Text),
    sa.Index("ix_predictions_request_id", "request_id", unique=True),
    sa.Index("ix_predictions_created_at", "created_at"),
    sa.Index("ix_predictions_variant", "variant"),
)

shadows = sa.Table(
    "prediction_shadows",
    metadata,
    sa.Column(
        "request_id",
        _ID,
        sa.ForeignKey("predictions.request_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("variant", _ID, nullable=False),
    sa.Column("model_versions", _JSON, nullable=False),
    sa.Column("risk", sa.Float, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
)

feedback = sa.Table(
    "prediction_feedback",
    metadata,
    sa.Column(
        "request_id",
        _ID,
        sa.ForeignKey("predictions.request_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("outcome", sa.Boolean, nullable=False),
    sa.Column("source", sa.String(64)),
    sa.Column("created_at", _TIME, nullable=False),
)

# Every outcome ever given for a prediction, in order: the first, then each correction (the
# `prediction_feedback` row is the current one). Only added to, never changed.
feedback_history = sa.Table(
    "prediction_feedback_history",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", _ID, sa.ForeignKey("predictions.request_id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # first | correction
    sa.Column("outcome", sa.Boolean, nullable=False),
    sa.Column("previous_outcome", sa.Boolean),
    sa.Column("source", sa.String(64)),
    sa.Column("key_name", sa.String(64)),
    sa.Column("reason", sa.String(512)),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Index("ix_prediction_feedback_history_request_id", "request_id"),
)

_PREDICTION_COLUMNS = [c for c in predictions.c if c.name != "id"]
_JOINED_COLUMNS = [
    *_PREDICTION_COLUMNS,
    shadows.c.variant.label("shadow_variant"),
    shadows.c.model_versions.label("shadow_model_versions"),
    shadows.c.risk.label("shadow_risk"),
    shadows.c.created_at.label("shadow_at"),
    feedback.c.outcome.label("outcome"),
    feedback.c.source.label("feedback_source"),
    feedback.c.created_at.label("feedback_at"),
]
_TIME_COLUMNS = ("created_at", "shadow_at", "feedback_at")


def _joined_select() -> sa.Select:
    return sa.select(*_JOINED_COLUMNS).select_from(
        predictions.outerjoin(shadows, shadows.c.request_id == predictions.c.request_id).outerjoin(
            feedback, feedback.c.request_id == predictions.c.request_id
        )
    )


# --------------------------------------------------------------------------- engine


def default_url() -> str:
    """MEDISCALE_STORE_URL, else an SQLite file `predictions.db` in the data dir."""
    from data.config import Settings

    return Settings.from_env().resolved_store_url()


def _resolve_url(url: str | URL | None) -> URL:
    resolved = make_url(url if url is not None else default_url())
    backend = resolved.get_backend_name()
    if backend == "postgresql":
        if resolved.drivername == "postgresql":  # SQLAlchemy would pick psycopg2, which is not installed
            resolved = resolved.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        database = resolved.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if in_memory or "mode=memory" in database or resolved.query.get("mode") == "memory":
            raise StoreError("an in-memory SQLite store is not shared between connections; give a file")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        raise StoreError(f"unsupported database backend {backend!r}: use sqlite or postgresql")
    return resolved


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions by itself: `_sqlite_on_begin` does, with the right mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        mode = _enable_wal(cursor)
        if mode != "wal":
            log.warning("SQLite refused WAL mode (journal_mode=%s); concurrent writers may fail", mode)
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> str:
    """WAL mode (persistent in the file), set once; returns the journal mode in force.

    Setting it takes an exclusive lock, and SQLite answers "database is locked" at once, without
    waiting out busy_timeout, when another process holds a lock meanwhile (seen in CI: two
    replicas opening one store). So: read the mode first (already WAL: nothing to set), and
    retry the switch until the busy timeout.
    """
    import sqlite3

    mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while mode != "wal":
        try:
            return str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return mode


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _make_engine(url: URL, echo: bool) -> Engine:
    common: dict[str, Any] = {"echo": echo, "hide_parameters": True, "json_serializer": _dumps}
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            **common,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=SQLITE_BUSY_TIMEOUT_S,
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}",
        },
        **common,
    )


# --------------------------------------------------------------------------- store


class PredictionStore:
    """Predictions, shadow scores and feedback, committed before each write method returns."""

    def __init__(self, url: str | URL | None = None, store_note_text: bool = False, echo: bool = False):
        self._url = _resolve_url(url)
        self.store_note_text = store_note_text
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._write_lock = threading.Lock()  # SQLite only: one writer per process (`_writer`)
        self._engine = _make_engine(self._url, echo)
        self._create_tables()
        log.info("prediction store ready at %s", self.url)

    # ----------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self._url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._url.get_backend_name()

    @property
    def engine(self) -> Engine:
        return self._engine

    def __repr__(self) -> str:
        return f"PredictionStore({self.url!r}, store_note_text={self.store_note_text})"

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction, committed on leaving the block (rolled back on an error).

        Other tables in the same database (serve/control.py) write through this too, so SQLite
        writers keep one lock order (BEGIN IMMEDIATE) and one process-wide write lock."""
        try:
            with self._writer(), self._engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except IntegrityError:  # a duplicate: the callers say which
            raise
        except (DBAPIError, PoolTimeout) as exc:  # rolled back: nothing of the block is stored
            raise StoreUnavailable(_unavailable(exc)) from None

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """This process's SQLite write lock, waited for no longer than the busy timeout: writers
        queued behind a locked file fail in turn instead of each adding its wait to the next."""
        if not self._sqlite:
            yield
            return
        if not self._write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise StoreUnavailable("prediction store unavailable (busy)")
        try:
            yield
        finally:
            self._write_lock.release()

    def _create_tables(self) -> None:
        with self.transaction() as conn:
            if not self._sqlite:  # concurrent create_all calls from several replicas would race
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
            metadata.create_all(conn)

    def to_db_time(self, moment: datetime) -> datetime:
        # SQLite has no time zones: it stores naive UTC, and `_from_db_time` marks it UTC again.
        moment = _as_utc(moment)
        return moment.replace(tzinfo=None) if self._sqlite else moment

    @staticmethod
    def from_db_time(moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    @staticmethod
    def _exists(conn: Connection, table: sa.Table, request_id: str) -> bool:
        stmt = sa.select(sa.literal(1)).select_from(table).where(table.c.request_id == request_id)
        return conn.execute(stmt).first() is not None

    def existing_request_ids(self, request_ids: list[str]) -> list[str]:
        """Which of `request_ids` already have a stored prediction (checked before scoring)."""
        found: set[str] = set()
        try:
            with self._engine.connect() as conn:
                for start in range(0, len(request_ids), 500):
                    chunk = request_ids[start : start + 500]
                    stmt = sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(chunk))
                    found.update(conn.execute(stmt).scalars())
        except (DBAPIError, PoolTimeout) as exc:
            raise StoreUnavailable(_unavailable(exc)) from None
        return sorted(found)

    def _prediction_row(self, record: PredictionRecord) -> dict[str, Any]:
        if not isinstance(record, PredictionRecord):
            raise StoreError(f"expected a PredictionRecord, got {type(record).__name__}")
        note_chars = record.note_chars
        if note_chars is None and record.note_text is not None:
            note_chars = len(record.note_text)
        return {
            "request_id": record.request_id,
            "created_at": self.to_db_time(record.created_at),
            "variant": record.variant,
            "model_versions": {str(k): str(v) for k, v in (record.model_versions or {}).items()},
            "risk": float(record.risk),
            "risk_band": record.risk_band,
            "components": _jsonable(dict(record.components or {})),
            "features": _clean_features(record.features, self.store_note_text),
            "patient_key": record.patient_key,
            "note_chars": None if note_chars is None else int(note_chars),
            "note_text": record.note_text if self.store_note_text else None,
        }

    # ----------------------------------------------------------------- writes

    def log_predictions(self, records: Iterable[PredictionRecord]) -> None:
        """Store predictions in one transaction, committed on return; any duplicate rejects them all."""
        rows = [self._prediction_row(r) for r in records]
        if not rows:
            return
        ids = [row["request_id"] for row in rows]
        repeated = [rid for rid, n in Counter(ids).items() if n > 1]
        if repeated:
            raise DuplicateRequest(repeated)
        try:
            with self.transaction() as conn:
                conn.execute(predictions.insert(), rows)
        except IntegrityError:
            existing = self.existing_request_ids(ids)
            if existing:
                raise DuplicateRequest(existing) from None
            raise
        log.debug("stored %d prediction(s)", len(rows))

    def log_prediction(self, record: PredictionRecord) -> None:
        """Store one prediction, committed on return."""
        self.log_predictions([record])

    def log_shadow(
        self,
        request_id: str,
        variant: str,
        model_versions: Mapping[str, Any],
        risk: float,
        recorded_at: datetime | None = None,
    ) -> bool:
        """Store the other variant's score for a stored prediction.

        Returns False, and keeps the first score, if this request already has a shadow score.
        `recorded_at` (default now) is for replays and backfills of scores made earlier.
        """
        _check_id("request_id", request_id)
        _check_id("variant", variant)
        risk = float(risk)
        if not (math.isfinite(risk) and 0.0 <= risk <= 1.0):
            raise StoreError(f"shadow risk must be in [0, 1], got {risk}")
        row = {
            "request_id": request_id,
            "variant": variant,
            "model_versions": {str(k): str(v) for k, v in (model_versions or {}).items()},
            "risk": risk,
            "created_at": self.to_db_time(recorded_at or datetime.now(UTC)),
        }
        if not self._insert_once(shadows, row):
            log.info("shadow score for %s already stored; kept the first", request_id)
            return False
        return True

    def _insert_once(self, table: sa.Table, row: dict[str, Any]) -> bool:
        """Insert a row keyed by an existing prediction's request_id; False if one is already there.

        Raises UnknownRequest when no prediction has that request_id. The unique key settles a
        race between two writers: the loser re-checks and reports the row the winner wrote.
        """
        request_id = row["request_id"]
        try:
            with self.transaction() as conn:
                if not self._exists(conn, predictions, request_id):
                    raise UnknownRequest(f"no prediction with request_id {request_id!r}")
                if self._exists(conn, table, request_id):
                    return False
                conn.execute(table.insert(), row)
                return True
        except IntegrityError:
            with self._engine.connect() as conn:
                if not self._exists(conn, predictions, request_id):
                    raise UnknownRequest(f"no prediction with request_id {request_id!r}") from None
                if self._exists(conn, table, request_id):
                    return False
            raise

    def add_feedback(
        self,
        request_id: str,
        outcome: bool,
        source: str | None = None,
        recorded_at: datetime | None = None,
        key_name: str | None = None,
    ) -> dict[str, Any]:
        """Record the observed outcome of a prediction; returns the joined row (as `get`).

        `recorded_at` (default now) is when the outcome became known: monitoring as of an earlier
        time ignores it. Backfills from an EHR export set it; the HTTP endpoint never does.

        Raises UnknownRequest when the request was never predicted, and DuplicateFeedback when it
        already has feedback: a later outcome is a correction (`correct_feedback`), not a second
        first-write. The row and its history entry are written together.
        """
        _check_id("request_id", request_id)
        outcome = _check_outcome(outcome, source)
        at = self.to_db_time(recorded_at or datetime.now(UTC))
        row = {"request_id": request_id, "outcome": outcome, "source": source, "created_at": at}
        history = {**row, "kind": "first", "key_name": key_name}
        try:
            with self.transaction() as conn:
                if not self._exists(conn, predictions, request_id):
                    raise UnknownRequest(f"no prediction with request_id {request_id!r}")
                if self._exists(conn, feedback, request_id):
                    raise DuplicateFeedback(f"feedback for {request_id!r} already stored")
                conn.execute(feedback.insert(), row)
                conn.execute(feedback_history.insert(), history)
        except IntegrityError:  # a concurrent first write won
            raise DuplicateFeedback(f"feedback for {request_id!r} already stored") from None
        log.debug("stored feedback for %s", request_id)
        joined = self.get(request_id)
        assert joined is not None  # predictions are never deleted by the store
        return joined

    def correct_feedback(
        self,
        request_id: str,
        outcome: bool,
        reason: str,
        key_name: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Replace a prediction's outcome, keeping the old one in the history with who and why.

        Raises UnknownRequest when there is no prediction, NoFeedbackYet when it has no outcome
        to correct. The
        corrected row's time is the correction's: monitoring as of an earlier time does not see
        an outcome that was then unknown (nor the wrong one: it is not kept in the current row)."""
        _check_id("request_id", request_id)
        outcome = _check_outcome(outcome, source)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 512:
            raise StoreError("reason must be a non-empty string of at most 512 characters")
        at = self.to_db_time(datetime.now(UTC))
        with self.transaction() as conn:
            current = conn.execute(
                sa.select(feedback.c.outcome).where(feedback.c.request_id == request_id)
            ).first()
            if current is None:
                if not self._exists(conn, predictions, request_id):
                    raise UnknownRequest(f"no prediction with request_id {request_id!r}")
                raise NoFeedbackYet(f"no feedback to correct for request_id {request_id!r}")
            conn.execute(
                feedback.update()
                .where(feedback.c.request_id == request_id)
                .values(outcome=outcome, source=source, created_at=at)
            )
            conn.execute(
                feedback_history.insert(),
                {
                    "request_id": request_id,
                    "kind": "correction",
                    "outcome": outcome,
                    "previous_outcome": bool(current[0]),
                    "source": source,
                    "key_name": key_name,
                    "reason": reason.strip(),
                    "created_at": at,
                },
            )
        joined = self.get(request_id)
        assert joined is not None
        return joined

    def feedback_history(self, request_id: str) -> list[dict[str, Any]]:
        """Every outcome given for a prediction, oldest first."""
        stmt = (
            sa.select(feedback_history)
            .where(feedback_history.c.request_id == request_id)
            .order_by(feedback_history.c.id)
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        except (DBAPIError, PoolTimeout) as exc:
            raise StoreUnavailable(_unavailable(exc)) from None
        return [{**dict(r), "created_at": self.from_db_time(r["created_at"])} for r in rows]

    # ----------------------------------------------------------------- reads

    def _flat(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        row = dict(mapping)
        for name in _TIME_COLUMNS:
            row[name] = self.from_db_time(row[name])
        return row

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The prediction with its shadow score and feedback (each None when absent), or None."""
        stmt = _joined_select().where(predictions.c.request_id == request_id)
        try:
            with self._engine.connect() as conn:
                found = conn.execute(stmt).mappings().first()
        except (DBAPIError, PoolTimeout) as exc:
            raise StoreUnavailable(_unavailable(exc)) from None
        if found is None:
            return None
        row = self._flat(found)
        result = {c.name: row[c.name] for c in _PREDICTION_COLUMNS}
        result["shadow"] = (
            None
            if row["shadow_variant"] is None
            else {
                "variant": row["shadow_variant"],
                "model_versions": row["shadow_model_versions"],
                "risk": row["shadow_risk"],
                "created_at": row["shadow_at"],
            }
        )
        result["feedback"] = (
            None
            if row["outcome"] is None
            else {
                "outcome": row["outcome"],
                "source": row["feedback_source"],
                "created_at": row["feedback_at"],
            }
        )
        return result

    def counts_by_variant(self, since: datetime | None = None) -> dict[str, int]:
        """Number of stored predictions per variant (since a time, if given)."""
        stmt = sa.select(predictions.c.variant, sa.func.count()).group_by(predictions.c.variant)
        if since is not None:
            stmt = stmt.where(predictions.c.created_at >= self.to_db_time(since))
        with self._engine.connect() as conn:
            return {variant: int(n) for variant, n in conn.execute(stmt)}

    def joined(
        self,
        limit: int | None = None,
        labelled_only: bool = False,
        expand_features: bool = False,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> pd.DataFrame:
        """Predictions with their shadow score and outcome, oldest first, for monitoring and drift.

        `limit` keeps the most recent rows; `since` / `until` bound created_at (inclusive).
        `outcome` is a nullable boolean: <NA> until feedback
        arrives. `labelled_only` keeps rows with feedback. `expand_features` replaces the `features`
        column with one column per feature. Note text is never part of the frame.
        """
        import pandas as pd

        stmt = _joined_select().order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
        if labelled_only:
            stmt = stmt.where(feedback.c.outcome.is_not(None))
        if since is not None:
            stmt = stmt.where(predictions.c.created_at >= self.to_db_time(since))
        if until is not None:
            stmt = stmt.where(predictions.c.created_at <= self.to_db_time(until))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self._engine.connect() as conn:
            rows = [self._flat(m) for m in conn.execute(stmt).mappings()]
        columns = [c.name for c in _JOINED_COLUMNS if c.name != "note_text"]
        frame = pd.DataFrame.from_records(rows[::-1], columns=columns)
        for name in _TIME_COLUMNS:
            frame[name] = pd.to_datetime(frame[name], utc=True)
        frame["outcome"] = frame["outcome"].astype("boolean")
        for name in ("risk", "shadow_risk"):
            frame[name] = frame[name].astype("float64")
        frame["note_chars"] = frame["note_chars"].astype("Int64")
        if expand_features:
            expanded = pd.DataFrame.from_records(list(frame["features"]), index=frame.index)
            taken = set(frame.columns) - {"features"}
            expanded.columns = [f"feature_{c}" if c in taken else c for c in expanded.columns]
            frame = pd.concat([frame.drop(columns="features"), expanded], axis=1)
        return frame

    def ping(self) -> None:
        """Raise if the database cannot be reached (a readiness check)."""
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        """Close the pooled connections. The store reconnects if it is used again."""
        self._engine.dispose()
