"""From an experiment to the rule's evidence: the Brier bound, the AUROC look, and the gates.

Paired when most labelled patients were scored by both models (the served variant and its
shadow): then the Brier difference is per patient and the AUROC test is DeLong's paired test.
Otherwise unpaired: the Brier difference uses the inverse-probability pseudo-outcome
phi_i = brier_i (1{challenger}/w_challenger - 1{champion}/w_champion), whose mean is the
difference of the arms' Brier scores, and the AUROCs are compared as independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitor.experiment import Experiment
from monitor.rule import AurocLook, Bound, Evidence, Gate, RuleConfig
from monitor.stats import confidence_sequence, delong, spending_boundaries, srm_test


@dataclass(frozen=True)
class DriftFinding:
    """The drift check on record for the challenger's traffic: its share (None: no check on
    record) and how it reads in the gate (when it ran, on which versions)."""

    share: float | None
    detail: str


# A drift check returns the share of drifted feature columns (or a DriftFinding that also says
# when and on what it ran), or None when it has not run.
DriftCheck = Callable[[Experiment], "float | DriftFinding | None"]


@dataclass(frozen=True)
class PreviousLook:
    look: int
    n: int
    information: float


def _labels(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = frame["outcome"].astype(bool).to_numpy()
    return frame["p_champion"].to_numpy(float), frame["p_challenger"].to_numpy(float), y


def is_paired(experiment: Experiment) -> bool:
    labelled = experiment.labelled()
    return len(labelled) > 0 and int(labelled["paired"].sum()) * 2 >= len(labelled)


def brier_bound(experiment: Experiment, config: RuleConfig, weights: dict[str, float]) -> Bound | None:
    """The always-valid interval of the mean Brier difference (challenger - champion)."""
    if is_paired(experiment):
        p0, p1, y = _labels(experiment.labelled(paired=True))
        values = (p1 - y) ** 2 - (p0 - y) ** 2
    else:
        frame = experiment.labelled()
        if frame.empty:
            return None
        y = frame["outcome"].astype(bool).to_numpy()
        served = frame["risk"].to_numpy(float)
        arm = frame["arm"].to_numpy()
        w_champ, w_chall = _arm_shares(experiment, weights)
        sign = np.where(arm == "challenger", 1.0 / w_chall, -1.0 / w_champ)
        values = (served - y) ** 2 * sign
    if len(values) < 2:
        return None
    interval = confidence_sequence(values, config.channel_alpha, config.cs_n_opt)
    return Bound(interval.estimate, interval.lower, interval.upper, interval.n)


def _arm_shares(experiment: Experiment, weights: dict[str, float]) -> tuple[float, float]:
    w0 = float(weights.get(experiment.champion.variant, 0.0))
    w1 = float(weights.get(experiment.challenger.variant, 0.0))
    if w0 <= 0 or w1 <= 0:
        raise ValueError(
            "an unpaired comparison needs both variants' configured weights above 0 "
            f"(got {experiment.champion.variant}={w0}, {experiment.challenger.variant}={w1})"
        )
    return w0 / (w0 + w1), w1 / (w0 + w1)


def auroc_look(
    experiment: Experiment, config: RuleConfig, previous: Sequence[PreviousLook]
) -> AurocLook | None:
    """A planned AUROC look if this decision reaches the next planned number of labels."""
    paired = is_paired(experiment)
    frame = experiment.labelled(paired=True) if paired else experiment.labelled()
    n = len(frame)
    k = len(previous) + 1
    if k > config.looks or n < config.look_at(k):
        return None
    information = min(n / config.max_labels, 1.0)
    times = [p.information for p in previous]
    if times and information <= times[-1]:
        return None
    y = frame["outcome"].astype(bool).to_numpy()
    if y.all() or not y.any():
        return None
    if paired:
        p0, p1, _ = _labels(frame)
        test = delong(p0, p1, y)
        diff, z = test.diff, test.z
    else:
        from monitor.stats import auroc_se

        arms = frame["arm"].to_numpy()
        risk = frame["risk"].to_numpy(float)
        sides = {}
        for name in ("champion", "challenger"):
            mask = arms == name
            if y[mask].all() or not y[mask].any():
                return None
            sides[name] = auroc_se(risk[mask], y[mask])
        diff = sides["challenger"][0] - sides["champion"][0]
        se = math.hypot(sides["challenger"][1], sides["champion"][1])
        z = diff / se if se > 0 else 0.0
    boundary = spending_boundaries([*times, information], config.channel_alpha)[-1]
    return AurocLook(look=k, n=n, information=information, diff=float(diff), z=float(z), boundary=boundary)


def gates(
    experiment: Experiment,
    config: RuleConfig,
    weights: dict[str, float],
    drift: DriftCheck | None = None,
) -> list[Gate]:
    """Every gate and guardrail, each with the figures behind it."""
    out: list[Gate] = []
    rows = experiment.rows
    observed = {
        experiment.champion.variant: int((rows["arm"] == "champion").sum()),
        experiment.challenger.variant: int((rows["arm"] == "challenger").sum()),
    }
    pair_weights = {v: float(weights.get(v, 0.0)) for v in observed}
    if all(w > 0 for w in pair_weights.values()):
        srm = srm_test(observed, pair_weights)
        out.append(
            Gate(
                "sample_ratio",
                srm.p_value >= config.srm_p,
                f"traffic split {observed} against weights {pair_weights}: chi-square {srm.chi2:.2f}, "
                f"p = {srm.p_value:.3g} (mismatch below {config.srm_p})",
            )
        )
    else:
        out.append(
            Gate(
                "sample_ratio", True, f"not tested: a configured weight is 0 ({pair_weights})", pending=False
            )
        )

    coverage = coverage_by_arm(experiment)
    values = [c["coverage"] for c in coverage.values() if c["coverage"] is not None]
    pending = len(values) < 2
    low = [
        a for a, c in coverage.items() if c["coverage"] is not None and c["coverage"] < config.min_coverage
    ]
    gap = max(values) - min(values) if not pending else 0.0
    out.append(
        Gate(
            "feedback_coverage",
            not pending and not low and gap < config.max_coverage_gap,
            "coverage (labelled / matured): "
            + ", ".join(
                f"{a} {c['labelled']}/{c['matured']}"
                + ("" if c["coverage"] is None else f" = {c['coverage']:.0%}")
                for a, c in coverage.items()
            )
            + f"; need >= {config.min_coverage:.0%} each and a gap under {config.max_coverage_gap:.0%}",
            pending=pending,
        )
    )
    out.extend(_calibration(experiment, config))
    out.extend(_subgroups(experiment, config))
    out.append(_drift_gate(experiment, config, drift))
    return out


def _drift_gate(experiment: Experiment, config: RuleConfig, drift: DriftCheck | None) -> Gate:
    """Promotion needs the challenger's traffic to look like its training data: the newest drift
    check's share at most max_drift_share. No check on record does not block (it says so): drift
    is a reason to look before promoting, not evidence about which model is better."""
    found = drift(experiment) if drift is not None else None
    if isinstance(found, DriftFinding):
        share, detail = found.share, found.detail
    else:
        share = found
        detail = (
            "no drift check has run"
            if share is None
            else f"drift share {share:.2f} (max {config.max_drift_share:.2f})"
        )
    return Gate("drift", share is None or share <= config.max_drift_share, detail)


def coverage_by_arm(experiment: Experiment) -> dict[str, dict]:
    rows = experiment.rows
    out = {}
    for arm in ("champion", "challenger"):
        mine = rows[(rows["arm"] == arm) & rows["matured"]]
        labelled = int(mine["outcome"].notna().sum())
        out[arm] = {
            "matured": len(mine),
            "labelled": labelled,
            "coverage": labelled / len(mine) if len(mine) else None,
        }
    return out


def _calibration(experiment: Experiment, config: RuleConfig) -> list[Gate]:
    """The challenger's calibration: point estimates inside the bounds before a promotion (gate);
    an observed/expected ratio whose always-valid interval lies outside them is a guardrail."""
    from monitor.metrics import calibration_fit

    frame = experiment.labelled()
    frame = frame[frame["p_challenger"].notna()]
    y = frame["outcome"].astype(bool).to_numpy()
    p = frame["p_challenger"].to_numpy(float)
    enough = len(y) >= config.min_labels and int(y.sum()) >= config.min_events
    if not enough:
        detail = f"challenger calibration: {len(y)} labelled, {int(y.sum())} events; too few to judge"
        return [
            Gate("calibration", False, detail, pending=True),
            Gate("calibration_guardrail", True, detail, kind="guardrail", pending=True),
        ]
    slope, _ = calibration_fit(p, y)
    ratio = float(y.sum() / p.sum())
    lo_s, hi_s = config.calibration_slope
    lo_r, hi_r = config.observed_expected
    slope_ok = slope.value is not None and lo_s <= slope.value <= hi_s
    ratio_ok = lo_r <= ratio <= hi_r
    gate = Gate(
        "calibration",
        slope_ok and ratio_ok,
        f"challenger calibration slope {slope.value if slope.value is None else round(slope.value, 3)} "
        f"(bounds {lo_s}-{hi_s}), observed/expected {ratio:.3f} (bounds {lo_r}-{hi_r})",
    )
    # Always-valid interval of mean(y - p); O/E = 1 + mean(y - p) / mean(p).
    interval = confidence_sequence(y.astype(float) - p, config.channel_alpha, config.cs_n_opt)
    mean_p = float(p.mean())
    oe_low, oe_high = 1 + interval.lower / mean_p, 1 + interval.upper / mean_p
    outside = oe_low > hi_r or oe_high < lo_r
    guard = Gate(
        "calibration_guardrail",
        not outside,
        f"challenger observed/expected {ratio:.3f}, always-valid interval [{oe_low:.3f}, {oe_high:.3f}]"
        + (f" lies outside {lo_r}-{hi_r}" if outside else f" overlaps {lo_r}-{hi_r}"),
        kind="guardrail",
    )
    return [gate, guard]


def _subgroups(experiment: Experiment, config: RuleConfig) -> list[Gate]:
    """No subgroup (sex, age band) where the challenger is significantly worse: a paired Brier
    bound per subgroup, Bonferroni over the subgroups tested, valid at every look."""
    if not is_paired(experiment):
        return [Gate("subgroups", True, "not tested: needs paired (shadow) scores", pending=False)]
    frame = experiment.labelled(paired=True)
    groups = [
        (column, value, part)
        for column in ("sex", "age_band")
        for value, part in frame.groupby(column)
        if value != "unknown" and len(part) >= config.subgroup_min_labels
    ]
    if not groups:
        return [Gate("subgroups", False, "no subgroup has enough labelled patients yet", pending=True)]
    alpha = config.channel_alpha / len(groups)
    worse = []
    for column, value, part in groups:
        p0, p1, y = _labels(part)
        interval = confidence_sequence((p1 - y) ** 2 - (p0 - y) ** 2, alpha, config.cs_n_opt)
        if interval.lower > config.threshold:
            worse.append(
                f"{column}={value} (n {len(part)}, Brier difference lower bound {interval.lower:+.4f})"
            )
    tested = ", ".join(f"{c}={v}" for c, v, _ in groups)
    return [
        Gate(
            "subgroups",
            not worse,
            ("challenger significantly worse for " + "; ".join(worse))
            if worse
            else f"no subgroup worse ({tested})",
        )
    ]


def evidence(
    experiment: Experiment,
    config: RuleConfig,
    weights: dict[str, float],
    previous_looks: Sequence[PreviousLook] = (),
    drift: DriftCheck | None = None,
) -> Evidence:
    paired = is_paired(experiment)
    if paired:
        frame = experiment.labelled(paired=True)
        labelled, events = len(frame), int(frame["outcome"].astype(bool).sum())
    else:
        frame = experiment.labelled()
        per_arm = [frame[frame["arm"] == a] for a in ("champion", "challenger")]
        labelled = min(len(f) for f in per_arm)
        events = min(int(f["outcome"].astype(bool).sum()) for f in per_arm)
    days = (experiment.as_of - experiment.started).total_seconds() / 86400.0
    return Evidence(
        labelled=labelled,
        events=events,
        days=days,
        brier=brier_bound(experiment, config, weights),
        auroc=auroc_look(experiment, config, previous_looks),
        gates=tuple(gates(experiment, config, weights, drift)),
        paired=paired,
    )
