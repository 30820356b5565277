"""`monitor report`: live performance of the champion and the challenger from the store.

Sections: traffic (weights against the observed split, with the sample-ratio check), feedback
coverage overall and by prediction age, metrics with 95% intervals on matured labelled patients
(each arm's served predictions; and both models on the same patients when shadow scores exist),
ROC and calibration curve points for plots, the same by sex and age band, and estimates made
before outcomes arrive (CBPE AUROC and the expected Brier score) set against the realized figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.evidence import coverage_by_arm
from monitor.experiment import Experiment, NoPredictions, load
from monitor.metrics import curves, expected_auroc, expected_brier, performance
from monitor.service import Routing
from monitor.stats import srm_test
from serve.store import PredictionStore

AGE_BUCKETS = ((0, 30, "0-29 days (outcome not due yet)"), (30, 60, "30-59 days"), (60, 90, "60-89 days"))
SUBGROUP_MIN = 20  # smaller groups are listed with n and events only


def _estimates(p: np.ndarray, realized: dict | None) -> dict:
    out: dict[str, Any] = {
        "label": "estimate from the model's own probabilities, assuming they are calibrated",
        "n": len(p),
        "expected_auroc_cbpe": expected_auroc(p),
        "expected_brier": expected_brier(p),
    }
    if realized is not None:
        out["realized_on_the_same_patients"] = realized
    return out


def _gap(estimate: float | None, figure: dict) -> dict | None:
    """Estimate against the realized figure; outside the realized 95% interval = a changed relation."""
    if estimate is None or figure.get("value") is None:
        return None
    ci = figure.get("ci95")
    outside = ci is not None and not (ci[0] <= estimate <= ci[1])
    return {"estimate": estimate, "realized": figure["value"], "ci95": ci, "outside_ci": outside}


def _coverage_by_age(rows) -> list[dict]:
    out = []
    buckets = [*AGE_BUCKETS, (90, 10**9, "90+ days")]
    for low, high, name in buckets:
        part = rows[(rows["age_days"] >= low) & (rows["age_days"] < high)]
        labelled = int(part["outcome"].notna().sum())
        out.append(
            {
                "age": name,
                "predictions": len(part),
                "labelled": labelled,
                "coverage": labelled / len(part) if len(part) else None,
                "matured": bool(low >= 30),
            }
        )
    return out


def _subgroups(frame, column: str, p_column: str, threshold: float) -> list[dict]:
    out = []
    for value, part in frame.groupby(column):
        y = part["outcome"].astype(bool).to_numpy()
        entry: dict[str, Any] = {"group": f"{column}={value}", "n": len(part), "events": int(y.sum())}
        if len(part) >= SUBGROUP_MIN and 0 < y.sum() < len(y):
            perf = performance(part[p_column].to_numpy(float), y, threshold, n_boot=0)
            entry.update(
                auroc=perf.auroc.to_dict(),
                brier=perf.brier.to_dict(),
                observed_expected=perf.observed_expected.to_dict(),
            )
        else:
            entry["note"] = (
                f"too few patients or no events/non-events (figures need {SUBGROUP_MIN}+ with both)"
            )
        out.append(entry)
    return out


def _arm_section(experiment: Experiment, arm: str, threshold: float, n_boot: int) -> dict:
    rows = experiment.rows[experiment.rows["arm"] == arm]
    patients = experiment.labelled()
    patients = patients[patients["arm"] == arm]
    section: dict[str, Any] = {
        "variant": getattr(experiment, arm).variant,
        "versions": getattr(experiment, arm).versions,
        "predictions": len(rows),
        "labelled_patients": len(patients),
    }
    y = patients["outcome"].astype(bool).to_numpy()
    p = patients["risk"].to_numpy(float)
    if len(y):
        perf = performance(p, y, threshold, n_boot=n_boot).to_dict()
        section["served"] = perf
        section["curves"] = curves(p, y)  # ROC and calibration points for plots (None: one class)
        section["by_subgroup"] = _subgroups(patients, "sex", "risk", threshold) + _subgroups(
            patients, "age_band", "risk", threshold
        )
        realized = {
            "auroc": _gap(expected_auroc(p), perf["auroc"]),
            "brier": _gap(expected_brier(p), perf["brier"]),
        }
    else:
        section["served"] = None
        section["curves"] = None
        section["note"] = "no matured, labelled predictions yet: only estimates"
        realized = None
    section["before_outcomes"] = _estimates(rows["risk"].to_numpy(float), None)
    section["estimate_vs_realized"] = realized
    return section


def _paired_section(experiment: Experiment, threshold: float, n_boot: int) -> dict | None:
    """Both models on the same labelled patients (served + shadow): the fair comparison."""
    from monitor.stats import delong

    frame = experiment.labelled(paired=True)
    if frame.empty:
        return None
    y = frame["outcome"].astype(bool).to_numpy()
    out: dict[str, Any] = {"patients": len(frame), "events": int(y.sum())}
    for arm in ("champion", "challenger"):
        out[arm] = performance(frame[f"p_{arm}"].to_numpy(float), y, threshold, n_boot=n_boot).to_dict()
        out[f"{arm}_curves"] = curves(frame[f"p_{arm}"].to_numpy(float), y)
        out[f"{arm}_by_subgroup"] = _subgroups(frame, "sex", f"p_{arm}", threshold) + _subgroups(
            frame, "age_band", f"p_{arm}", threshold
        )
    p0, p1 = frame["p_champion"].to_numpy(float), frame["p_challenger"].to_numpy(float)
    d = (p1 - y) ** 2 - (p0 - y) ** 2
    out["brier_difference"] = {
        "what": "challenger - champion, per patient; below 0 favours the challenger (fixed-sample 95% CI; "
        "`decide` uses an always-valid bound)",
        "value": float(d.mean()),
        "ci95": [
            float(d.mean() - 1.96 * d.std(ddof=1) / np.sqrt(len(d))),
            float(d.mean() + 1.96 * d.std(ddof=1) / np.sqrt(len(d))),
        ]
        if len(d) > 1
        else None,
    }
    if 0 < y.sum() < len(y):
        test = delong(p0, p1, y)
        out["auroc_difference"] = {
            "what": "challenger - champion, DeLong paired (fixed-sample 95% CI)",
            "value": test.diff,
            "ci95": list(test.ci()),
            "z": test.z,
        }
    return out


def report(
    store: PredictionStore,
    routing: Routing,
    as_of: datetime | None = None,
    since: datetime | None = None,
    champion: str = "champion",
    challenger: str = "challenger",
    maturity_days: int = 30,
    n_boot: int = 200,
) -> dict:
    """The live performance report (a JSON-ready dict)."""
    as_of = as_of or datetime.now(UTC)
    base: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "since": since.isoformat() if since else None,
        "maturity_days": maturity_days,
        "weights_from": routing.source,
        "high_risk_threshold": routing.high_risk,
    }
    if since is not None and since > as_of:
        return {
            **base,
            "empty": True,
            "message": f"--since {since.isoformat()} is after the as-of time: nothing",
        }
    try:
        experiment = load(store, as_of, since, maturity_days, champion, challenger)
    except NoPredictions as err:
        return {**base, "empty": True, "message": str(err)}
    rows = experiment.rows
    observed = {
        experiment.champion.variant: int((rows["arm"] == "champion").sum()),
        experiment.challenger.variant: int((rows["arm"] == "challenger").sum()),
    }
    weights = {v: float(routing.weights.get(v, 0.0)) for v in observed}
    traffic: dict[str, Any] = {"configured_weights": weights, "observed": observed}
    if all(w > 0 for w in weights.values()):
        srm = srm_test(observed, weights)
        traffic["sample_ratio"] = {"chi2": srm.chi2, "p_value": srm.p_value, "mismatch": srm.p_value < 0.001}
        if srm.p_value < 0.001:
            traffic["warning"] = (
                "sample-ratio mismatch: assignment or logging is broken; no comparison is valid"
            )
    matured = rows[rows["matured"]]
    return {
        **base,
        "empty": False,
        "experiment": experiment.name,
        "traffic": traffic,
        "feedback": {
            "overall": {
                "predictions": len(rows),
                "matured": len(matured),
                "labelled_matured": int(matured["outcome"].notna().sum()),
                "coverage": float(matured["outcome"].notna().mean()) if len(matured) else None,
            },
            "by_arm": coverage_by_arm(experiment),
            "by_prediction_age": _coverage_by_age(rows),
            "note": f"outcomes are due {maturity_days} days after a prediction; "
            "younger ones without feedback are normal",
        },
        "champion": _arm_section(experiment, "champion", routing.high_risk, n_boot),
        "challenger": _arm_section(experiment, "challenger", routing.high_risk, n_boot),
        "paired": _paired_section(experiment, routing.high_risk, n_boot),
    }


def summary(report_: dict) -> str:
    """A few readable lines for the terminal (the JSON has everything)."""
    lines = [f"as of {report_['as_of']}" + (f", since {report_['since']}" if report_.get("since") else "")]
    if report_.get("empty"):
        return "\n".join([*lines, report_["message"]])
    lines.append(f"experiment {report_['experiment']}")
    traffic = report_["traffic"]
    srm = traffic.get("sample_ratio")
    lines.append(
        f"traffic {traffic['observed']} against weights {traffic['configured_weights']}"
        + (f" (sample-ratio p = {srm['p_value']:.3g})" if srm else "")
    )
    if traffic.get("warning"):
        lines.append("WARNING " + traffic["warning"])
    cov = report_["feedback"]["overall"]
    lines.append(
        f"feedback: {cov['labelled_matured']} of {cov['matured']} matured predictions labelled"
        + (f" ({cov['coverage']:.0%})" if cov["coverage"] is not None else "")
    )
    for arm in ("champion", "challenger"):
        section = report_[arm]
        served = section.get("served")
        head = f"{arm} {section['variant']} {section['versions']}: {section['predictions']} predictions"
        if served:
            a, b = served["auroc"], served["brier"]
            auroc = "n/a" if a["value"] is None else f"{a['value']:.3f}"
            lines.append(f"{head}; {served['n']} labelled, AUROC {auroc}, Brier {b['value']:.4f}")
        else:
            est = section["before_outcomes"]
            auc = est["expected_auroc_cbpe"]
            lines.append(f"{head}; no outcomes yet, estimated AUROC {auc if auc is None else round(auc, 3)}")
    paired = report_.get("paired")
    if paired:
        d = paired["brier_difference"]
        lines.append(f"paired on {paired['patients']} patients: Brier difference {d['value']:+.4f}")
    return "\n".join(lines)
