"""Live performance of one model on labelled patients, each figure with a 95% interval.

Intervals: AUROC by DeLong; Brier by the normal approximation of a mean; observed/expected by the
Poisson interval of the observed count; calibration slope and intercept by the Wald intervals of
the logistic recalibration fit (statsmodels); sensitivity, specificity and PPV by Wilson; AUPRC and
ECE by a seeded percentile bootstrap. Subgroup figures use scikit-learn on the subgroup's own rows
(Evidently 0.7's GroupBy returns the overall AUROC for every group).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
EPS = 1e-6


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": None if self.low is None else [self.low, self.high]}


def _f(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _est(value: float, low: float | None = None, high: float | None = None) -> Estimate:
    return Estimate(_f(value), None if low is None else _f(low), None if high is None else _f(high))


@dataclass(frozen=True)
class Performance:
    """The figures the report shows for one model on one set of labelled patients."""

    n: int
    events: int
    auroc: Estimate
    auprc: Estimate
    brier: Estimate
    ece: Estimate
    calibration_slope: Estimate
    calibration_intercept: Estimate
    observed_expected: Estimate
    threshold: float
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    confusion: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {"n": self.n, "events": self.events, "threshold": self.threshold}
        for name in (
            "auroc",
            "auprc",
            "brier",
            "ece",
            "calibration_slope",
            "calibration_intercept",
            "observed_expected",
            "sensitivity",
            "specificity",
            "ppv",
        ):
            out[name] = getattr(self, name).to_dict()
        out["confusion"] = dict(self.confusion)
        return out


def wilson(successes: int, total: int) -> Estimate:
    if total == 0:
        return Estimate(None)
    p = successes / total
    denom = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denom
    return _est(p, centre - half, centre + half)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |observed - predicted| over equal-frequency bins, weighted by bin size."""
    order = np.argsort(p, kind="mergesort")
    total = 0.0
    for chunk in np.array_split(order, min(bins, len(p))):
        if len(chunk):
            total += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return total / len(p)


def calibration_fit(p: np.ndarray, y: np.ndarray) -> tuple[Estimate, Estimate]:
    """Calibration slope (logistic regression of y on logit p) and calibration intercept
    (calibration-in-the-large: intercept with logit p as an offset), each with a Wald 95% CI."""
    import statsmodels.api as sm

    logit = np.log(np.clip(p, EPS, 1 - EPS) / np.clip(1 - p, EPS, 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slope_fit = sm.GLM(y.astype(float), sm.add_constant(logit), family=sm.families.Binomial()).fit()
            b, se = float(slope_fit.params[1]), float(slope_fit.bse[1])
            slope = _est(b, b - Z95 * se, b + Z95 * se)
            icpt_fit = sm.GLM(
                y.astype(float), np.ones((len(y), 1)), family=sm.families.Binomial(), offset=logit
            ).fit()
            a, se_a = float(icpt_fit.params[0]), float(icpt_fit.bse[0])
            intercept = _est(a, a - Z95 * se_a, a + Z95 * se_a)
    except Exception:  # perfect separation or a degenerate sample: no estimate rather than a crash
        return Estimate(None), Estimate(None)
    return slope, intercept


def observed_expected(p: np.ndarray, y: np.ndarray) -> Estimate:
    observed, expected = float(y.sum()), float(p.sum())
    if expected <= 0:
        return Estimate(None)
    ratio = observed / expected
    if observed == 0:
        return _est(ratio, 0.0, stats.chi2.ppf(0.975, 2) / 2 / expected)
    low = stats.chi2.ppf(0.025, 2 * observed) / 2 / expected
    high = stats.chi2.ppf(0.975, 2 * observed + 2) / 2 / expected
    return _est(ratio, low, high)


def _bootstrap(p: np.ndarray, y: np.ndarray, statistic, n_boot: int, seed: int) -> tuple[float, float]:
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(p), len(p))
        if y[idx].all() or not y[idx].any():
            continue
        values.append(statistic(p[idx], y[idx]))
    if len(values) < n_boot // 2:
        return math.nan, math.nan
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def performance(
    p: np.ndarray, y: np.ndarray, threshold: float, n_boot: int = 200, seed: int = 0
) -> Performance:
    """Every report figure for probabilities `p` and outcomes `y` (booleans)."""
    from sklearn.metrics import average_precision_score

    from monitor.stats import auroc_se

    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    n, events = len(y), int(y.sum())
    flagged = p >= threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())
    confusion = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    brier_i = (p - y) ** 2
    brier = (
        _est(brier_i.mean(), *(brier_i.mean() + np.array([-1, 1]) * Z95 * brier_i.std(ddof=1) / math.sqrt(n)))
        if n > 1
        else _est(brier_i.mean() if n else math.nan)
    )
    both = 0 < events < n
    if both:
        auc, se = auroc_se(p, y)
        auroc = _est(auc, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se))
        auprc = _est(
            average_precision_score(y, p),
            *_bootstrap(p, y, lambda a, b: average_precision_score(b, a), n_boot, seed),
        )
        slope, intercept = calibration_fit(p, y)
    else:
        auroc = auprc = slope = intercept = Estimate(None)
    ece = (
        _est(
            expected_calibration_error(p, y), *_bootstrap(p, y, expected_calibration_error, n_boot, seed + 1)
        )
        if n
        else Estimate(None)
    )
    return Performance(
        n=n,
        events=events,
        auroc=auroc,
        auprc=auprc,
        brier=brier,
        ece=ece,
        calibration_slope=slope,
        calibration_intercept=intercept,
        observed_expected=observed_expected(p, y) if n else Estimate(None),
        threshold=threshold,
        sensitivity=wilson(tp, tp + fn),
        specificity=wilson(tn, tn + fp),
        ppv=wilson(tp, tp + fp),
        confusion=confusion,
    )


# --------------------------------------------------------------------------- before outcomes


def expected_auroc(p: np.ndarray) -> float | None:
    """Confidence-based performance estimation (CBPE) of the AUROC: if the probabilities are
    calibrated, patient i is a readmission with probability p_i, so the expected true- and
    false-positive counts above each threshold are cumulative sums of p and 1 - p."""
    p = np.sort(np.asarray(p, dtype=float))[::-1]
    positives, negatives = p.sum(), (1 - p).sum()
    if len(p) < 2 or positives <= 0 or negatives <= 0:
        return None
    tpr = np.r_[0.0, np.cumsum(p) / positives]
    fpr = np.r_[0.0, np.cumsum(1 - p) / negatives]
    return float(np.trapezoid(tpr, fpr))


def expected_brier(p: np.ndarray) -> float | None:
    """The Brier score a calibrated model expects: mean p (1 - p)."""
    p = np.asarray(p, dtype=float)
    return float(np.mean(p * (1 - p))) if len(p) else None


# --------------------------------------------------------------------------- curves for plots

CURVE_POINTS = 101  # ROC points kept for a plot: enough for a smooth line, small in JSON


def curves(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict | None:
    """ROC and calibration curve points for the dashboard's plots (scikit-learn), or None
    without both outcomes. The calibration bins are equal-frequency, as the ECE's, so each
    point stands for as many patients as the others."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    if not 0 < y.sum() < len(y):
        return None
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=True)
    if len(fpr) > CURVE_POINTS:  # keep the ends and an even spread between them
        keep = np.unique(np.linspace(0, len(fpr) - 1, CURVE_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    n_bins = max(1, min(bins, len(p) // 10))
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))  # sklearn's bins, for the counts
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    calibration = [
        {"predicted": float(a), "observed": float(b), "n": int(n)}
        for a, b, n in zip(predicted, observed, counts[counts > 0], strict=True)
    ]
    return {
        "roc": {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]},
        "calibration": calibration,
        "calibration_bins": "equal-frequency bins of the predicted risk",
    }
