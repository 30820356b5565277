"""The access audit table: who called what, when, and what they were answered.

One row per authenticated call (and per call refused for its role or its rate): key name, role,
method, endpoint label, request id, status and time. Never a body, a patient id, note text or a
feature value: the endpoint is a bounded label (`router.endpoint_name`), not the path, because a
path can carry an id. Rows live next to the predictions (same database) and are only added.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from serve.commit import GroupCommit
from serve.store import ROW_ID

if TYPE_CHECKING:
    from serve.store import PredictionStore

log = logging.getLogger(__name__)

metadata = sa.MetaData()
access_log = sa.Table(
    "access_log",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_name", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(128)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("where", sa.String(8), nullable=False),
    sa.Index("ix_access_log_at", "at"),
    sa.Index("ix_access_log_key_name", "key_name"),
)


@dataclass(frozen=True)
class AccessEntry:
    key_name: str
    role: str
    method: str
    endpoint: str
    request_id: str | None
    status: int
    where: str = "replica"  # or "proxy": refused before reaching a replica


class AuditLog:
    """Appends access entries to the store's database (tables created on first use)."""

    def __init__(self, store: PredictionStore):
        self.store = store
        with store.transaction() as conn:
            metadata.create_all(conn)
        self._commits = GroupCommit(self.write_many)

    async def record(self, entry: AccessEntry) -> None:
        """Write `entry`, in one transaction with the entries of concurrent calls."""
        await self._commits.commit([entry])

    def write(self, entry: AccessEntry) -> None:
        self.write_many([entry])

    def write_many(self, entries: list[AccessEntry]) -> None:
        """Entries in one transaction (the gate group-commits concurrent calls' rows)."""
        at = self.store.to_db_time(datetime.now(UTC))
        with self.store.transaction() as conn:
            conn.execute(access_log.insert(), [{**asdict(e), "at": at} for e in entries])
