"""The pre-registered decision rule: its parameters (declared before the experiment) and the one
function that turns evidence into promote / keep_testing / rollback / inconclusive.

The engine (`monitor.decide`) and the simulation (`bench/decisions.py`) both call `evaluate`,
so the error rates the simulation measures are those of the rule that acts on the registry.

Evidence channels, each one-sided at alpha / 2 (Bonferroni, so wrong promotion <= alpha):

1. Brier (primary): d_i = (p_challenger - y)^2 - (p_champion - y)^2 per labelled patient, with
   an always-valid confidence sequence, safe to check every day.
2. AUROC: DeLong's paired z at planned looks (every max_labels / looks labels) against
   Lan-DeMets O'Brien-Fleming boundaries; only the looks actually taken spend alpha.

Superiority mode (threshold 0): promote when the Brier upper bound is below 0, or when the AUROC
crosses its upper boundary while the Brier lower bound is not above 0. Non-inferiority mode
(threshold = margin): promote on the Brier upper bound below the margin alone. In both, roll
back when the Brier lower bound is above the threshold, when the AUROC crosses its lower
boundary, or when a guardrail fails. Gates (minimum labels and events, sample ratio, coverage,
calibration, subgroups, drift) must all pass before a promotion.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Outcome = Literal["promote", "keep_testing", "rollback", "inconclusive"]


class RuleConfig(BaseModel):
    """Declared before the experiment starts (monitor/rule.yaml); its hash is stored with every
    decision, and a changed rule in the middle of an experiment is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["superiority", "non_inferiority"] = "superiority"
    margin: float = Field(
        0.002,
        ge=0,
        le=0.05,
        description="Non-inferiority margin on the Brier difference (challenger - champion).",
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Wrong-promotion budget, split over two channels.")
    max_labels: int = Field(5000, ge=100, description="Labelled patients at which the test ends.")
    max_days: int = Field(180, ge=31, description="Days from the first prediction at which it ends.")
    looks: int = Field(10, ge=1, le=100, description="Planned AUROC looks, every max_labels / looks labels.")
    cs_n_opt: int = Field(2500, ge=10, description="Labels at which the Brier sequence is tightest.")
    maturity_days: int = Field(30, ge=1, description="An outcome is known this long after a prediction.")
    min_labels: int = Field(300, ge=10, description="Labelled patients per model before any decision.")
    min_events: int = Field(30, ge=1, description="Readmissions per model before any decision.")
    min_coverage: float = Field(0.6, ge=0, le=1, description="Labelled / matured, per variant.")
    max_coverage_gap: float = Field(0.10, ge=0, le=1, description="Coverage difference between arms.")
    srm_p: float = Field(0.001, gt=0, lt=1, description="A sample-ratio p below this is a mismatch.")
    calibration_slope: tuple[float, float] = (0.8, 1.25)
    observed_expected: tuple[float, float] = (0.8, 1.25)
    subgroup_min_labels: int = Field(100, ge=10, description="Smaller subgroups are reported, not tested.")
    max_drift_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The drift gate: the newest drift check of the challenger's traffic "
        "(`monitor drift`) may show at most this share of drifted feature columns.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RuleConfig:
        for name in ("calibration_slope", "observed_expected"):
            low, high = getattr(self, name)
            if not 0 < low < 1 < high:
                raise ValueError(f"{name}: need 0 < low < 1 < high, got {low}, {high}")
        return self

    @property
    def threshold(self) -> float:
        """The Brier difference that separates promote from rollback."""
        return self.margin if self.mode == "non_inferiority" else 0.0

    @property
    def channel_alpha(self) -> float:
        return self.alpha / 2

    def look_at(self, k: int) -> int:
        """Labelled patients at planned AUROC look k (1-based)."""
        return math.ceil(self.max_labels * k / self.looks)

    def digest(self) -> str:
        """A short hash of the rule, stored with each decision (pre-registration)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Bound:
    """An always-valid interval for the mean Brier difference (challenger - champion)."""

    estimate: float
    lower: float
    upper: float
    n: int


@dataclass(frozen=True)
class AurocLook:
    """One planned look at the paired AUROC difference (challenger - champion)."""

    look: int
    n: int
    information: float
    diff: float
    z: float
    boundary: float


@dataclass(frozen=True)
class Gate:
    """A condition on the experiment: `gate`s must pass before a promotion; a failed
    `guardrail` is a reason to roll back."""

    name: str
    passed: bool
    detail: str
    kind: Literal["gate", "guardrail"] = "gate"
    pending: bool = False  # not decidable yet (too few labels): blocks promotion, never rolls back


@dataclass(frozen=True)
class Evidence:
    labelled: int  # patients with an outcome scored by both models (paired) or in the smaller arm
    events: int
    days: float  # since the experiment's first prediction
    brier: Bound | None
    auroc: AurocLook | None = None
    gates: tuple[Gate, ...] = ()
    paired: bool = True


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    rule: str
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(config: RuleConfig, evidence: Evidence) -> Verdict:
    """The decision for this evidence under the declared rule."""
    t = config.threshold
    failed_guardrails = [
        g for g in evidence.gates if g.kind == "guardrail" and not g.passed and not g.pending
    ]
    enough = evidence.labelled >= config.min_labels and evidence.events >= config.min_events
    srm = next((g for g in evidence.gates if g.name == "sample_ratio"), None)
    if srm is not None and not srm.passed:
        return Verdict("keep_testing", "sample_ratio_mismatch", [srm.detail, "no comparison is valid"])
    if enough and failed_guardrails:
        return Verdict("rollback", "guardrail", [g.detail for g in failed_guardrails])
    brier, auc = evidence.brier, evidence.auroc
    if enough and brier is not None and brier.lower > t:
        return Verdict(
            "rollback",
            "brier_lower_bound_above_threshold",
            [f"Brier difference {brier.estimate:+.4f}, lower bound {brier.lower:+.4f} > {t:+.4f}"],
        )
    if enough and auc is not None and auc.z <= -auc.boundary:
        return Verdict(
            "rollback",
            "auroc_below_lower_boundary",
            [f"AUROC difference {auc.diff:+.4f}, z {auc.z:.2f} <= -{auc.boundary:.2f} (look {auc.look})"],
        )
    blocking = [g for g in evidence.gates if g.kind == "gate" and (not g.passed or g.pending)]
    why_not: list[str] = []
    promote_rule = None
    if brier is not None and brier.upper < t:
        promote_rule = "brier_upper_bound_below_threshold"
        reason = f"Brier difference {brier.estimate:+.4f}, upper bound {brier.upper:+.4f} < {t:+.4f}"
    elif (
        config.mode == "superiority"
        and auc is not None
        and auc.z >= auc.boundary
        and brier is not None
        and brier.lower <= t
    ):
        promote_rule = "auroc_above_upper_boundary"
        reason = f"AUROC difference {auc.diff:+.4f}, z {auc.z:.2f} >= {auc.boundary:.2f} (look {auc.look})"
    if promote_rule is not None:
        if enough and not blocking:
            return Verdict("promote", promote_rule, [reason])
        why_not = [reason + ", but:"] + [g.detail for g in blocking]
        if not enough:
            why_not.append(_too_few(config, evidence))
    if evidence.labelled >= config.max_labels or evidence.days >= config.max_days:
        limit = "labels" if evidence.labelled >= config.max_labels else "days"
        return Verdict(
            "inconclusive",
            f"max_{limit}",
            [f"no decision by the maximum {limit}: the champion stays", *why_not],
        )
    reasons = why_not or [
        f"Brier difference {brier.estimate:+.4f} in [{brier.lower:+.4f}, {brier.upper:+.4f}], "
        f"which contains {t:+.4f}"
        if brier is not None
        else "no labelled pairs yet"
    ]
    if not enough and not why_not:
        reasons.append(_too_few(config, evidence))
    return Verdict("keep_testing", "no_boundary_crossed", reasons)


def _too_few(config: RuleConfig, evidence: Evidence) -> str:
    return (
        f"{evidence.labelled} labelled patients / {evidence.events} events; "
        f"a decision needs {config.min_labels} / {config.min_events}"
    )
