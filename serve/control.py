"""Control tables in the prediction store's database: routing overrides and the decision log.

- `routing_overrides`: a decision (or an operator) sets a variant's weight while the variant
  serves given model versions. The Router reads the newest override of each variant at every
  alias refresh, so a rollback reaches every replica without a restart. The override names the
  versions it was made for: when the alias moves to a new challenger the old override no longer
  applies, and a redeploy of the YAML cannot silently send traffic back to a rolled-back model.
  Rows are only ever added (history kept); `weight` NULL means "back to the configured weight".
- `decisions`: the audit trail of `python -m monitor decide`: inputs, counts, estimates, bounds,
  the rule and its hash, the code version, and who applied it and when. One row per experiment
  and as-of time, so deciding twice for the same as-of returns the stored decision.
- `monitor_events`: every other monitoring pass (a drift check, a `monitor watch` pass with
  what it retrained and registered, an `approval` or rejection of a model version by a named
  person via `python -m ml registry approve/reject`), with its summary (`drift_share` for a drift
  check) and its JSON payload. The service reads the newest drift share from here for its
  metrics, and `monitor decide`'s drift gate reads the newest check of the challenger's versions.

Both live next to `predictions` (same engine, same transactions), created on first use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from serve.store import ROW_ID

if TYPE_CHECKING:
    from serve.store import PredictionStore

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)

metadata = sa.MetaData()

routing_overrides = sa.Table(
    "routing_overrides",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("variant", sa.String(128), nullable=False),
    sa.Column("model_versions", _JSON, nullable=False),
    sa.Column("weight", sa.Float),
    sa.Column("reason", sa.String(512), nullable=False),
    sa.Column("decision_id", sa.BigInteger),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Index("ix_routing_overrides_variant", "variant"),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(256), nullable=False),
    sa.Column("as_of", _TIME, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("rule_digest", sa.String(32), nullable=False),
    sa.Column("payload", _JSON, nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("applied_at", _TIME),
    sa.Column("applied_by", sa.String(128)),
    sa.Column("applied_action", _JSON),
    sa.UniqueConstraint("experiment", "as_of", name="uq_decisions_experiment_as_of"),
)

monitor_events = sa.Table(
    "monitor_events",
    metadata,
    sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(128)),
    sa.Column("model_versions", _JSON),
    sa.Column("drift_share", sa.Float),
    sa.Column("summary", sa.String(512), nullable=False),
    sa.Column("payload", _JSON, nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Index("ix_monitor_events_kind", "kind"),
)
EVENT_KINDS = ("drift", "watch", "approval")


def versions_key(versions: Mapping[str, Any] | None) -> str:
    """A canonical text for a variant's model versions, e.g. 'tabular:3' or 'note:2,tabular:3'."""
    return ",".join(f"{k}:{v}" for k, v in sorted((versions or {}).items()) if v is not None)


def ensure_tables(store: PredictionStore) -> None:
    """Create the control tables once per store object (a write transaction: not on every read)."""
    if getattr(store, "_control_ready", False):
        return
    from serve.store import _DDL_LOCK_KEY

    with store.transaction() as conn:
        if store.backend == "postgresql":  # replicas starting together would race on CREATE TABLE
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
        metadata.create_all(conn)
    store._control_ready = True  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Override:
    id: int
    variant: str
    model_versions: dict[str, str]
    weight: float | None
    reason: str
    decision_id: int | None
    created_by: str
    created_at: datetime


def _row_time(store: PredictionStore, moment: datetime) -> datetime:
    return store.from_db_time(moment)  # type: ignore[return-value]


def latest_overrides(store: PredictionStore) -> dict[str, Override]:
    """The newest override row of each variant."""
    ensure_tables(store)
    newest = (
        sa.select(routing_overrides.c.variant, sa.func.max(routing_overrides.c.id).label("id"))
        .group_by(routing_overrides.c.variant)
        .subquery()
    )
    stmt = sa.select(routing_overrides).join(newest, newest.c.id == routing_overrides.c.id)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return {
        r["variant"]: Override(
            id=int(r["id"]),
            variant=r["variant"],
            model_versions={str(k): str(v) for k, v in (r["model_versions"] or {}).items()},
            weight=r["weight"],
            reason=r["reason"],
            decision_id=r["decision_id"],
            created_by=r["created_by"],
            created_at=_row_time(store, r["created_at"]),
        )
        for r in rows
    }


def set_override(
    store: PredictionStore,
    variant: str,
    model_versions: Mapping[str, Any],
    weight: float | None,
    reason: str,
    created_by: str,
    decision_id: int | None = None,
) -> int:
    """Add an override row (history is kept); returns its id."""
    if weight is not None and not (float(weight) >= 0.0):
        raise ValueError("weight must be >= 0")
    ensure_tables(store)
    row = {
        "variant": variant,
        "model_versions": {str(k): str(v) for k, v in model_versions.items() if v is not None},
        "weight": None if weight is None else float(weight),
        "reason": reason[:512],
        "decision_id": decision_id,
        "created_by": created_by[:128],
        "created_at": store.to_db_time(datetime.now(UTC)),
    }
    with store.transaction() as conn:
        return int(
            conn.execute(routing_overrides.insert().returning(routing_overrides.c.id), row).scalar_one()
        )


def effective_weights(
    configured: Mapping[str, float],
    resolved: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Override],
) -> dict[str, float]:
    """Configured weights with each variant's override applied while the variant still serves the
    versions the override was made for."""
    weights = dict(configured)
    for name, override in overrides.items():
        if name not in weights or override.weight is None:
            continue
        if versions_key(resolved.get(name)) == versions_key(override.model_versions):
            weights[name] = override.weight
    return weights


def dumps(payload: Any) -> Any:
    """JSON-safe copy of a decision payload (numpy scalars, NaN -> None)."""
    from serve.store import _jsonable

    return json.loads(json.dumps(_jsonable(payload), allow_nan=False))


@dataclass(frozen=True)
class MonitorEvent:
    id: int
    kind: str
    variant: str | None
    model_versions: dict[str, str]
    drift_share: float | None
    summary: str
    payload: dict[str, Any]
    code_version: str
    created_at: datetime


def _event(store: PredictionStore, r: Mapping[str, Any]) -> MonitorEvent:
    return MonitorEvent(
        id=int(r["id"]),
        kind=r["kind"],
        variant=r["variant"],
        model_versions={str(k): str(v) for k, v in (r["model_versions"] or {}).items()},
        drift_share=r["drift_share"],
        summary=r["summary"],
        payload=r["payload"] or {},
        code_version=r["code_version"],
        created_at=_row_time(store, r["created_at"]),
    )


def log_event(
    store: PredictionStore,
    kind: str,
    summary: str,
    payload: Mapping[str, Any],
    code_version: str,
    variant: str | None = None,
    model_versions: Mapping[str, Any] | None = None,
    drift_share: float | None = None,
) -> int:
    """Add a monitoring event (drift check, watch pass, approval) to the audit table; returns its id."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {EVENT_KINDS}, got {kind!r}")
    ensure_tables(store)
    row = {
        "kind": kind,
        "variant": variant,
        "model_versions": {str(k): str(v) for k, v in (model_versions or {}).items() if v is not None},
        "drift_share": None if drift_share is None else float(drift_share),
        "summary": summary[:512],
        "payload": dumps(payload),
        "code_version": code_version[:64],
        "created_at": store.to_db_time(datetime.now(UTC)),
    }
    with store.transaction() as conn:
        return int(conn.execute(monitor_events.insert().returning(monitor_events.c.id), row).scalar_one())


def log_approval(
    store: PredictionStore,
    decision: str,
    model: str,
    version: str | int,
    approver: str,
    reason: str,
    code_version: str,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Add an `approval` event (decision `approved` or `rejected`) of one model version, by a named
    person and why, to the audit table; returns its id. `model_versions` is {model: version}."""
    payload = {
        **(details or {}),
        "decision": decision,
        "model": model,
        "version": str(version),
        "approver": approver,
        "reason": reason,
    }
    summary = f"{model} v{version} {decision} by {approver}: {reason}"
    return log_event(store, "approval", summary, payload, code_version, model_versions={model: version})


def events(
    store: PredictionStore, kind: str | None = None, variant: str | None = None, limit: int = 50
) -> list[MonitorEvent]:
    """The newest events first, optionally of one kind and one variant."""
    ensure_tables(store)
    stmt = sa.select(monitor_events).order_by(monitor_events.c.id.desc()).limit(limit)
    if kind is not None:
        stmt = stmt.where(monitor_events.c.kind == kind)
    if variant is not None:
        stmt = stmt.where(monitor_events.c.variant == variant)
    with store.engine.connect() as conn:
        return [_event(store, r) for r in conn.execute(stmt).mappings().all()]


def latest_event(store: PredictionStore, kind: str, variant: str | None = None) -> MonitorEvent | None:
    found = events(store, kind=kind, variant=variant, limit=1)
    return found[0] if found else None


def latest_decision(store: PredictionStore) -> dict[str, Any] | None:
    """The newest row of the decision log (id, experiment, outcome, as_of, created_at), or None."""
    ensure_tables(store)
    cols = [
        decisions.c.id,
        decisions.c.experiment,
        decisions.c.outcome,
        decisions.c.as_of,
        decisions.c.created_at,
    ]
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(*cols).order_by(decisions.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None
