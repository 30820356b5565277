"""`monitor decide`: one look at the experiment under the pre-registered rule, stored as an audit row.

- Deciding twice for the same experiment and as-of returns the stored decision unchanged.
- The rule is fixed when an experiment starts: its hash is stored with every decision, and a
  decision under a different rule for the same experiment is refused (pre-registration).
- AUROC looks already taken (their information times) come from the earlier decisions of this
  experiment, so alpha is spent only once per look however often `decide` runs.
- The drift gate reads the newest `drift` event (`python -m monitor drift`) recorded for the
  challenger variant while it served the experiment's versions, up to the as-of time. A share
  over the rule's max_drift_share blocks promotion; no check on record is said in the gate and
  does not block (drift says "look before promoting", not which model is better).
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import yaml

from monitor.evidence import DriftCheck, DriftFinding, PreviousLook, coverage_by_arm, evidence, is_paired
from monitor.experiment import Experiment, MonitorError, load
from monitor.rule import RuleConfig, evaluate
from monitor.service import Routing
from serve.control import decisions, dumps, ensure_tables, events, versions_key
from serve.store import PredictionStore

RULE_FILE = Path(__file__).resolve().with_name("rule.yaml")


def read_rule(path: Path | None = None) -> RuleConfig:
    """The declared rule (monitor/rule.yaml unless another file is given)."""
    path = Path(path or RULE_FILE)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ValueError(f"{path}: cannot read the rule file ({err.strerror})") from None
    except yaml.YAMLError:
        raise ValueError(f"{path}: not valid YAML") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of rule parameters")
    return RuleConfig.model_validate(values)


def code_version() -> str:
    """MEDISCALE_CODE_VERSION (set in images), else the git commit, else the package version."""
    from data.config import Settings

    given = Settings.from_env().code_version
    if given:
        return given[:64]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return "git:" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "mediscale " + version("mediscale")
        except PackageNotFoundError:
            return "unknown"


@dataclass
class Decision:
    """One decision: what was decided, why, on what figures, under which rule."""

    experiment: str
    as_of: str
    outcome: str
    rule: str
    reasons: list[str]
    rule_config: dict
    rule_digest: str
    champion: dict
    challenger: dict
    figures: dict
    gates: list[dict]
    code_version: str
    id: int | None = None
    stored_before: bool = False
    applied: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _previous(store: PredictionStore, name: str, as_of: datetime) -> list[dict]:
    stmt = (
        sa.select(decisions)
        .where(decisions.c.experiment == name, decisions.c.as_of < store.to_db_time(as_of))
        .order_by(decisions.c.as_of)
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def stored(store: PredictionStore, name: str, as_of: datetime) -> dict | None:
    stmt = sa.select(decisions).where(
        decisions.c.experiment == name, decisions.c.as_of == store.to_db_time(as_of)
    )
    with store.engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return None if row is None else dict(row)


def from_row(store: PredictionStore, row: dict) -> Decision:
    payload = dict(row["payload"])
    payload["id"] = int(row["id"])
    payload["stored_before"] = True
    if row.get("applied_at") is not None:
        payload["applied"] = {
            "at": store.from_db_time(row["applied_at"]).isoformat(),
            "by": row["applied_by"],
            "action": row["applied_action"],
        }
    return Decision(**{k: v for k, v in payload.items() if k in Decision.__dataclass_fields__})


def naive_chi_square(experiment: Experiment, threshold: float) -> dict:
    """The seed design's test, kept as a labelled secondary figure: chi-square on the accuracy of
    the served predictions between arms. Arms differ in patients, not only in models, and
    accuracy at one threshold ignores calibration, so it does not decide anything."""
    from scipy.stats import chi2_contingency

    frame = experiment.labelled()
    table = []
    for arm in ("champion", "challenger"):
        mine = frame[frame["arm"] == arm]
        correct = int(((mine["risk"] >= threshold) == mine["outcome"].astype(bool)).sum())
        table.append([correct, len(mine) - correct])
    out: dict[str, Any] = {
        "what": "secondary, not used by the rule: chi-square on accuracy between arms (the seed design)",
        "threshold": threshold,
        "correct_incorrect": {"champion": table[0], "challenger": table[1]},
    }
    if min(sum(r) for r in table) == 0 or min(table[0][0] + table[1][0], table[0][1] + table[1][1]) == 0:
        out["p_value"] = None
        return out
    chi2, p, _, _ = chi2_contingency(np.array(table), correction=False)
    out.update(chi2=float(chi2), p_value=float(p))
    return out


def stored_drift(store: PredictionStore, rule: RuleConfig) -> DriftCheck:
    """The drift gate's input: the newest drift check of the challenger's traffic on record."""

    def check(experiment: Experiment) -> DriftFinding:
        arm = experiment.challenger
        for event in events(store, kind="drift", variant=arm.variant, limit=500):
            if event.drift_share is None or versions_key(event.model_versions) != arm.key:
                continue
            if event.created_at > experiment.as_of:  # not known yet at this as-of
                continue
            share = float(event.drift_share)
            verdict = "over" if share > rule.max_drift_share else "within"
            return DriftFinding(
                share,
                f"drift share {share:.2f} {verdict} {rule.max_drift_share:.2f} on the challenger's traffic "
                f"({arm.key}), checked {event.created_at.isoformat(timespec='seconds')} (event #{event.id})",
            )
        return DriftFinding(
            None,
            f"no drift check on record for the challenger's traffic ({arm.key}); not blocking "
            f"(run `python -m monitor drift --variant {arm.variant}`)",
        )

    return check


def decide(
    store: PredictionStore,
    routing: Routing,
    rule: RuleConfig,
    as_of: datetime | None = None,
    champion: str = "champion",
    challenger: str = "challenger",
    since: datetime | None = None,
    drift: DriftCheck | None = None,
) -> Decision:
    """Decide for the experiment between the two variants as of `as_of`, and store it."""
    ensure_tables(store)
    as_of = as_of or datetime.now(UTC)
    experiment = load(store, as_of, since, rule.maturity_days, champion, challenger)
    existing = stored(store, experiment.name, experiment.as_of)
    if existing is not None:
        decision = from_row(store, existing)
        decision.notes.append(
            f"decision #{decision.id} for this as-of was already stored; returned unchanged"
        )
        return decision
    history = _previous(store, experiment.name, experiment.as_of)
    digests = {row["rule_digest"] for row in history}
    if digests and digests != {rule.digest()}:
        raise MonitorError(
            f"experiment {experiment.name} started under rule {sorted(digests)[0]}, now {rule.digest()}: "
            "the rule is declared before the experiment and cannot change during it; "
            "start a new experiment (a new challenger version) to use another rule"
        )
    looks = [
        PreviousLook(**row["payload"]["figures"]["auroc"]["look"])
        for row in history
        if (row["payload"].get("figures", {}).get("auroc") or {}).get("look")
    ]
    found = evidence(experiment, rule, routing.weights, looks, drift or stored_drift(store, rule))
    verdict = evaluate(rule, found)
    auroc = None
    if found.auroc is not None:
        auroc = {
            **asdict(found.auroc),
            "look": {"look": found.auroc.look, "n": found.auroc.n, "information": found.auroc.information},
        }
    figures = {
        "paired": found.paired,
        "labelled": found.labelled,
        "events": found.events,
        "days": round(found.days, 3),
        "brier_difference": None if found.brier is None else asdict(found.brier),
        "auroc": auroc,
        "auroc_looks_before": [asdict(p) for p in looks],
        "coverage": coverage_by_arm(experiment),
        "predictions": {
            "champion": int((experiment.rows["arm"] == "champion").sum()),
            "challenger": int((experiment.rows["arm"] == "challenger").sum()),
            "matured": int(experiment.rows["matured"].sum()),
            "patients_matured": len(experiment.patients),
        },
        "weights": {"values": routing.weights, "source": routing.source},
        "secondary_chi_square_on_accuracy": naive_chi_square(experiment, routing.high_risk),
    }
    if not is_paired(experiment):
        figures["note"] = "no shadow scores for most labelled patients: unpaired per-arm comparison"
    decision = Decision(
        experiment=experiment.name,
        as_of=experiment.as_of.isoformat(),
        outcome=verdict.outcome,
        rule=verdict.rule,
        reasons=verdict.reasons,
        rule_config=rule.model_dump(mode="json"),
        rule_digest=rule.digest(),
        champion={"variant": experiment.champion.variant, "versions": experiment.champion.versions},
        challenger={"variant": experiment.challenger.variant, "versions": experiment.challenger.versions},
        figures=dumps(figures),
        gates=[asdict(g) for g in found.gates],
        code_version=code_version(),
    )
    decision.id = _store(store, decision, experiment)
    return decision


def _store(store: PredictionStore, decision: Decision, experiment: Experiment) -> int:
    """Insert the decision; if a concurrent run stored the same as-of first, return that one."""
    from sqlalchemy.exc import IntegrityError

    payload = dumps(
        {k: v for k, v in decision.to_dict().items() if k not in ("id", "stored_before", "applied")}
    )
    row = {
        "experiment": decision.experiment,
        "as_of": store.to_db_time(experiment.as_of),
        "outcome": decision.outcome,
        "rule": decision.rule,
        "rule_digest": decision.rule_digest,
        "payload": payload,
        "code_version": decision.code_version,
        "created_at": store.to_db_time(datetime.now(UTC)),
    }
    try:
        with store.transaction() as conn:
            return int(conn.execute(decisions.insert().returning(decisions.c.id), row).scalar_one())
    except IntegrityError:
        existing = stored(store, decision.experiment, experiment.as_of)
        if existing is None:
            raise
        return int(existing["id"])


def history(store: PredictionStore, limit: int = 50) -> list[dict]:
    """The newest decisions, newest first (the audit trail)."""
    ensure_tables(store)
    stmt = sa.select(decisions).order_by(decisions.c.id.desc()).limit(limit)
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    return [from_row(store, r).to_dict() for r in rows]
