"""`monitor decide --apply`: act on a decision, once.

- promote: the MLflow `champion` alias moves to the challenger's versions (`ml.registry.promote`,
  which keeps the history for `ml registry rollback`). The running service picks it up at its
  next alias refresh (`alias_refresh_s`).
- rollback: a routing override sets the challenger variant's weight to 0 while it serves these
  versions (serve/control.py). Every Router replica reads it at its next refresh: no restart,
  and a later redeploy of the same YAML does not send traffic back to the rolled-back model.
- keep_testing / inconclusive: nothing changes (the champion stays).

Every decision, applied or not, is tagged onto the challenger's model versions; the decision
row records who applied it, when, and what was done. Applying an applied decision changes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa

from monitor.decide import Decision
from serve.control import decisions, set_override
from serve.settings import NOTE_MODEL, TABULAR_MODEL
from serve.store import PredictionStore

COMPONENT_MODELS = {"tabular": TABULAR_MODEL, "note": NOTE_MODEL}
TAG_PREFIX = "mediscale.decision"


def _models(decision: Decision, names: dict[str, str]) -> list[tuple[str, str]]:
    """(registered model, version) for each component the challenger serves."""
    out = []
    for component, version in decision.challenger["versions"].items():
        if component not in names:
            raise ValueError(f"decision names an unknown model component {component!r}")
        out.append((names[component], str(version)))
    return out


def tag_versions(decision: Decision, names: dict[str, str] | None = None) -> list[str]:
    """Write the decision onto the challenger's model versions (MLflow tags)."""
    from ml.registry import _client, configure

    configure()
    client = _client()
    summary = json.dumps(
        {
            "id": decision.id,
            "as_of": decision.as_of,
            "outcome": decision.outcome,
            "rule": decision.rule,
            "rule_digest": decision.rule_digest,
            "experiment": decision.experiment,
            "applied": decision.applied,
        },
        separators=(",", ":"),
        default=str,
    )[:5000]
    tagged = []
    for model, version in _models(decision, names or COMPONENT_MODELS):
        client.set_model_version_tag(model, version, f"{TAG_PREFIX}.{decision.id}", summary)
        client.set_model_version_tag(model, version, f"{TAG_PREFIX}.last", summary)
        tagged.append(f"{model} v{version}")
    return tagged


def apply(
    store: PredictionStore, decision: Decision, applied_by: str, names: dict[str, str] | None = None
) -> dict:
    """Carry out the decision unless it was applied before; returns what was done."""
    names = names or COMPONENT_MODELS
    if decision.id is None:
        raise ValueError("only a stored decision can be applied")
    if decision.applied:
        return {"changed": False, "note": f"decision #{decision.id} was already applied", **decision.applied}
    action: dict
    if decision.outcome == "promote":
        from ml.registry import configure, promote

        configure()
        moved = []
        for model, version in _models(decision, names):
            info = promote(model, version)
            moved.append(f"{model}@champion -> v{info.version}")
        action = {
            "action": "promote",
            "done": moved,
            "service": "picks the new champion up at its next alias refresh",
        }
    elif decision.outcome == "rollback":
        override = set_override(
            store,
            decision.challenger["variant"],
            decision.challenger["versions"],
            0.0,
            reason=f"decision #{decision.id}: rollback ({decision.rule})",
            created_by=applied_by,
            decision_id=decision.id,
        )
        action = {
            "action": "rollback",
            "done": [
                f"{decision.challenger['variant']} weight 0 while it serves {decision.challenger['versions']}"
            ],
            "override_id": override,
            "service": "every Router replica applies it at its next refresh, without a restart",
        }
    else:
        action = {"action": "none", "done": [], "service": f"{decision.outcome}: the champion stays"}
    now = datetime.now(UTC)
    with store.transaction() as conn:
        updated = conn.execute(
            sa.update(decisions)
            .where(decisions.c.id == decision.id, decisions.c.applied_at.is_(None))
            .values(applied_at=store.to_db_time(now), applied_by=applied_by[:128], applied_action=action)
        ).rowcount
    if not updated:
        return {"changed": False, "note": f"decision #{decision.id} was applied concurrently"}
    decision.applied = {"at": now.isoformat(), "by": applied_by, "action": action}
    return {"changed": decision.outcome in ("promote", "rollback"), **decision.applied}
