"""Evaluation of binary risk models: discrimination, calibration, bootstrap CIs and plots.

Pure functions over numpy arrays (``y`` in {0, 1}, ``p`` in [0, 1]) so the tabular model and a
later text model report the same numbers. A readmission model is used as a risk score, so both
ranking (AUROC, AUPRC) and calibration (Brier, ECE) matter, and each comes with a confidence
interval because test sets of a few thousand admissions give visibly noisy estimates.

The bootstrap is vectorised: every resample is a vector of row multiplicities, and the four
built-in metrics are computed for a whole block of resamples at once as weighted statistics
over the rows sorted by ``p`` (results equal computing the metric on the resampled arrays).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

log = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], float]
STRATEGIES = ("quantile", "uniform")
# Resamples are processed in blocks of about this many (resample, row) cells to bound memory
# (a block holds a handful of float64 arrays of this size, ~10 MB each).
_BLOCK_CELLS = 1_000_000


# --------------------------------------------------------------------------- input checks


def _check_inputs(y, p) -> tuple[np.ndarray, np.ndarray]:
    """Return (y as int8, p as float64) or raise ValueError naming the problem."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(
            f"y and p must be 1-D arrays, got shapes {y.shape} and {p.shape} "
            "(for predict_proba output pass the positive-class column, p[:, 1])"
        )
    if len(y) != len(p):
        raise ValueError(f"y and p have different lengths ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise ValueError("empty input: y and p have no rows")
    n_nan = int(np.isnan(p).sum())
    if n_nan:
        raise ValueError(f"p contains {n_nan} NaN value(s); probabilities must be finite numbers in [0, 1]")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"p must be probabilities in [0, 1], found values in [{p.min():g}, {p.max():g}]")
    if y.dtype != bool:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            examples = ", ".join(repr(v) for v in list(dict.fromkeys(y[bad].tolist()))[:5])
            raise ValueError(
                f"y must contain only 0/1 labels, found {int(bad.sum())} other value(s): {examples}"
            )
    return y.astype(np.int8), p


def _require_both_classes(y: np.ndarray, metric_name: str) -> None:
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        only = 1 if positives else 0
        raise ValueError(
            f"{metric_name} needs both classes in y, got only class {only} in {len(y)} rows "
            "(the metric is undefined without positives and negatives)"
        )


def _check_bins(n_bins: int, strategy: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


# --------------------------------------------------------------------------- point metrics


def auroc(y, p) -> float:
    """Area under the ROC curve (ties count one half); needs both classes."""
    y, p = _check_inputs(y, p)
    _require_both_classes(y, "AUROC")
    return float(skm.roc_auc_score(y, p))


def auprc(y, p) -> float:
    """Average precision (sklearn's step-wise AUPRC, no interpolation); needs both classes.

    Reported next to AUROC because with rare positives AUROC can look good while the top of
    the ranking is still mostly false alarms; the no-skill baseline of AUPRC is the base rate.
    """
    y, p = _check_inputs(y, p)
    _require_both_classes(y, "AUPRC")
    return float(skm.average_precision_score(y, p))


def brier(y, p) -> float:
    """Mean squared error of the probabilities (a proper score: rewards calibration and sharpness)."""
    y, p = _check_inputs(y, p)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(y, p, n_bins: int = 10, strategy: str = "quantile") -> float:
    """ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|.

    Bins are those of ``sklearn.calibration.calibration_curve`` (a row goes to bin
    ``searchsorted(inner_edges, p)``). The default "quantile" strategy uses equal-count bins
    (edges at quantiles of ``p``): readmission risks crowd at low probabilities, so fixed-width
    ("uniform") bins leave the upper bins almost empty and their gaps are pure noise, while
    equal-count bins estimate every gap from the same number of rows. Tied probabilities stay
    in one bin, so bins are only approximately equal-count. ECE depends on the binning: compare
    values only at the same ``n_bins`` and ``strategy``. Sampling noise adds to the absolute
    gaps, so ECE is biased upward (more so on small data) and a well-calibrated model's point
    estimate can sit at the lower edge of its bootstrap interval.
    """
    y, p = _check_inputs(y, p)
    _check_bins(n_bins, strategy)
    s = _Sorted(y, p)
    return float(_ece_weighted(s, np.ones((1, len(y))), n_bins, strategy)[0])


# Metrics that are undefined unless y has both classes; bootstrap_ci skips single-class resamples
# for any metric carrying this attribute (set it on your own callables if they need it too).
auroc.needs_both_classes = True  # type: ignore[attr-defined]
auprc.needs_both_classes = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- weighted (vectorised) forms


class _Sorted:
    """Rows sorted by p, with the start of every run of tied probabilities."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.order = np.argsort(p, kind="stable")
        self.p = p[self.order]
        self.y = y[self.order].astype(np.float64)
        self.n = len(p)
        self.level_starts = np.flatnonzero(np.r_[True, self.p[1:] != self.p[:-1]])


def _level_counts(s: _Sorted, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and total weight per distinct probability (ascending), per resample row of w."""
    pos = np.add.reduceat(w * s.y, s.level_starts, axis=1)
    tot = np.add.reduceat(w, s.level_starts, axis=1)
    return pos, tot


def _auroc_weighted(s: _Sorted, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC with row weights: P(p_pos > p_neg) + 0.5 P(tie). NaN for one class."""
    pos, tot = _level_counts(s, w)
    neg = tot - pos
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def _auprc_weighted(s: _Sorted, w: np.ndarray) -> np.ndarray:
    """Average precision with row weights: sum over thresholds (descending) of dRecall * precision."""
    pos, tot = _level_counts(s, w)
    pos, tot = pos[:, ::-1], tot[:, ::-1]
    tp, predicted = np.cumsum(pos, axis=1), np.cumsum(tot, axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * precision).sum(axis=1) / pos.sum(axis=1)


def _brier_weighted(s: _Sorted, w: np.ndarray) -> np.ndarray:
    return (w * (s.p - s.y) ** 2).sum(axis=1) / w.sum(axis=1)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own percentile interpolation formula, so edges match np.percentile exactly."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _ece_weighted(s: _Sorted, w: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """ECE per resample row of integer weights w (m, n), rows in sorted order.

    Quantile edges are recomputed per resample (as np.percentile on the resampled array would),
    then per-bin sums come from cumulative sums at the bin boundaries, so nothing loops over
    resamples.
    """
    m, n = w.shape
    total = w.sum(axis=1)
    rows = np.arange(m)[:, None]
    if strategy == "quantile":
        q = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        # Virtual index into each resample's sorted (repeated) array, as in np.percentile "linear".
        h = q[None, :] * (total[:, None] - 1)
        lo = np.floor(h)
        t = h - lo
        hi = np.minimum(lo + 1, total[:, None] - 1)
        # Rank r of the repeated array is sorted row searchsorted(cumw, r, "right"); offsetting every
        # resample by a constant larger than any total makes one flat searchsorted do all rows.
        cumw = np.cumsum(w, axis=1)
        offset = rows * (total.max() + 1)
        flat = (cumw + offset).ravel()

        def at_rank(r: np.ndarray) -> np.ndarray:
            j = np.searchsorted(flat, (r + offset).ravel(), side="right").reshape(r.shape) - rows * n
            return s.p[np.minimum(j, n - 1)]

        edges = _lerp(at_rank(lo), at_rank(hi), t)
        edges = np.maximum.accumulate(edges, axis=1)
    else:
        edges = np.broadcast_to(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], (m, n_bins - 1))
    # Rows with p > edge_k go above bin k (searchsorted "left" on the edges, like calibration_curve).
    cut = np.searchsorted(s.p, edges.ravel(), side="right").reshape(m, n_bins - 1)
    bounds = np.concatenate([np.zeros((m, 1), np.int64), cut, np.full((m, 1), n, np.int64)], axis=1)
    zero = np.zeros((m, 1))
    cum_y = np.concatenate([zero, np.cumsum(w * s.y, axis=1)], axis=1)
    cum_p = np.concatenate([zero, np.cumsum(w * s.p, axis=1)], axis=1)
    bin_y = np.diff(np.take_along_axis(cum_y, bounds, axis=1), axis=1)
    bin_p = np.diff(np.take_along_axis(cum_p, bounds, axis=1), axis=1)
    return np.abs(bin_y - bin_p).sum(axis=1) / total


def _vectorised_form(metric: Metric) -> Callable[[_Sorted, np.ndarray], np.ndarray] | None:
    """Weighted implementation for the built-in metrics (and partials of ECE), else None."""
    forms = {auroc: _auroc_weighted, auprc: _auprc_weighted, brier: _brier_weighted}
    if metric in forms:
        return forms[metric]
    if metric is expected_calibration_error:
        return functools.partial(_ece_weighted, n_bins=10, strategy="quantile")
    if (
        isinstance(metric, functools.partial)
        and metric.func is expected_calibration_error
        and not metric.args
    ):
        kwargs = {"n_bins": 10, "strategy": "quantile", **metric.keywords}
        if set(kwargs) == {"n_bins", "strategy"}:
            _check_bins(kwargs["n_bins"], kwargs["strategy"])
            return functools.partial(_ece_weighted, **kwargs)
    return None


def _needs_both_classes(metric: Metric) -> bool:
    if isinstance(metric, functools.partial):
        return _needs_both_classes(metric.func)
    return bool(getattr(metric, "needs_both_classes", False))


# --------------------------------------------------------------------------- bootstrap


def _resample_counts(n: int, n_boot: int, seed: int, groups) -> Iterator[np.ndarray]:
    """Yield blocks (m, n) of row multiplicities, one resample per row, in original row order.

    With ``groups``, whole groups are drawn with replacement and each row inherits its group's
    multiplicity, so a resample has a varying number of rows.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        codes, n_units = None, n
    else:
        _, codes = np.unique(groups, return_inverse=True)
        codes = codes.ravel()
        n_units = int(codes.max()) + 1
    block = max(1, min(n_boot, _BLOCK_CELLS // max(n, n_units)))
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        draws = rng.integers(0, n_units, size=(m, n_units))
        flat = (draws + np.arange(m)[:, None] * n_units).ravel()
        counts = np.bincount(flat, minlength=m * n_units).reshape(m, n_units)
        yield counts if codes is None else counts[:, codes]


def _check_groups(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n:
        raise ValueError(f"groups must be 1-D with one id per row: got shape {groups.shape} for {n} rows")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise ValueError("groups contains NaN ids; every row needs a group (e.g. patient) id")
    return groups


def _bootstrap_values(
    metrics: dict[str, Metric], y: np.ndarray, p: np.ndarray, n_boot: int, seed: int, groups
) -> dict[str, np.ndarray]:
    """Metric value per resample (NaN where skipped for a single class), all metrics on the same draws."""
    s = _Sorted(y, p)
    forms = {name: _vectorised_form(metric) for name, metric in metrics.items()}
    both = {name: _needs_both_classes(metric) for name, metric in metrics.items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for counts in _resample_counts(len(y), n_boot, seed, groups):
        pos = counts @ y.astype(np.int64)
        two_classes = (pos > 0) & (pos < counts.sum(axis=1))
        w = counts[:, s.order].astype(np.float64)
        for name, metric in metrics.items():
            if forms[name] is not None:
                values = forms[name](s, w)
            else:  # arbitrary callable: evaluate it on each resampled array
                values = np.full(len(counts), np.nan)
                for i, c in enumerate(counts):
                    if both[name] and not two_classes[i]:
                        continue
                    idx = np.repeat(np.arange(len(y)), c)
                    values[i] = metric(y[idx], p[idx])
            if both[name]:
                values = np.where(two_classes, values, np.nan)
            out[name].append(values)
    return {name: np.concatenate(v) for name, v in out.items()}


def _percentile_ci(values: np.ndarray, alpha: float, name: str) -> tuple[float, float]:
    valid = values[~np.isnan(values)]
    if len(valid) == 0:
        raise ValueError(
            f"bootstrap for {name}: no resample had both classes; too few positives or negatives "
            "(or groups) for a confidence interval"
        )
    if len(valid) < len(values):
        log.warning(
            "bootstrap for %s: skipped %d of %d resamples with a single class; the CI may be too narrow",
            name,
            len(values) - len(valid),
            len(values),
        )
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _metric_name(metric: Metric) -> str:
    if isinstance(metric, functools.partial):
        return _metric_name(metric.func)
    return getattr(metric, "__name__", repr(metric))


def bootstrap_ci(
    metric: Metric,
    y,
    p,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``metric(y, p)``.

    Resamples rows, or whole groups when ``groups`` (e.g. patient ids) is given: admissions of
    one patient share risk factors and outcomes, so resampling rows treats correlated rows as
    independent evidence and gives intervals that are too narrow; resampling patients keeps the
    correlation inside each draw (cluster bootstrap). Resamples with a single class are skipped
    for metrics that need both classes (``needs_both_classes`` attribute, set on auroc/auprc).

    The built-in metrics (and ``functools.partial(expected_calibration_error, ...)``) run
    vectorised; any other callable is evaluated on each resampled array. The same ``seed``
    draws the same resamples for every metric.
    """
    if not callable(metric):
        raise ValueError(f"metric must be a callable metric(y, p), got {metric!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    y, p = _check_inputs(y, p)
    groups = _check_groups(groups, len(y))
    name = _metric_name(metric)
    if _needs_both_classes(metric):
        _require_both_classes(y, name)
    values = _bootstrap_values({name: metric}, y, p, n_boot, seed, groups)[name]
    return _percentile_ci(values, alpha, name)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class MetricReport:
    """Point estimates with (low, high) bootstrap CIs; NaN CIs when evaluated with n_boot=0."""

    auroc: float
    auroc_ci: tuple[float, float]
    auprc: float
    auprc_ci: tuple[float, float]
    brier: float
    brier_ci: tuple[float, float]
    ece: float
    ece_ci: tuple[float, float]
    n: int
    positives: int

    _METRICS = ("auroc", "auprc", "brier", "ece")

    def as_dict(self, prefix: str = "test_") -> dict:
        """Flat JSON-able dict; CIs as [low, high] lists, non-finite values as None (strict JSON)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        out: dict = {}
        for m in self._METRICS:
            out[f"{prefix}{m}"] = num(getattr(self, m))
            out[f"{prefix}{m}_ci"] = [num(v) for v in getattr(self, f"{m}_ci")]
        out[f"{prefix}n"] = int(self.n)
        out[f"{prefix}positives"] = int(self.positives)
        return out

    def mlflow_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Scalars only, for mlflow.log_metrics; CI bounds as <metric>_ci_low/_high, NaNs left out."""
        out: dict[str, float] = {}
        for m in self._METRICS:
            low, high = getattr(self, f"{m}_ci")
            for key, value in ((m, getattr(self, m)), (f"{m}_ci_low", low), (f"{m}_ci_high", high)):
                if math.isfinite(value):
                    out[f"{prefix}{key}"] = float(value)
        out[f"{prefix}n"] = float(self.n)
        out[f"{prefix}positives"] = float(self.positives)
        return out


def evaluate(y, p, n_boot: int = 1000, seed: int = 0, groups=None) -> MetricReport:
    """All four metrics with 95% percentile-bootstrap CIs (n_boot=0: no CIs).

    All metrics share the same resamples, so the CIs equal those of ``bootstrap_ci`` with the
    same seed and groups. Pass patient ids as ``groups`` when a patient can have several rows.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    y, p = _check_inputs(y, p)
    groups = _check_groups(groups, len(y))
    started = time.perf_counter()
    points = {
        "auroc": auroc(y, p),
        "auprc": auprc(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
    }
    nan_ci = (math.nan, math.nan)
    cis = dict.fromkeys(points, nan_ci)
    if n_boot:
        funcs = {"auroc": auroc, "auprc": auprc, "brier": brier, "ece": expected_calibration_error}
        values = _bootstrap_values(funcs, y, p, n_boot, seed, groups)
        cis = {name: _percentile_ci(v, 0.05, name) for name, v in values.items()}
    report = MetricReport(
        auroc=points["auroc"],
        auroc_ci=cis["auroc"],
        auprc=points["auprc"],
        auprc_ci=cis["auprc"],
        brier=points["brier"],
        brier_ci=cis["brier"],
        ece=points["ece"],
        ece_ci=cis["ece"],
        n=len(y),
        positives=int(y.sum()),
    )
    log.info(
        "evaluated %d rows (%d positives, n_boot=%d, %s) in %.2fs: AUROC %.3f [%.3f, %.3f], "
        "AUPRC %.3f, Brier %.4f, ECE %.4f",
        report.n,
        report.positives,
        n_boot,
        "group bootstrap" if groups is not None else "row bootstrap",
        time.perf_counter() - started,
        report.auroc,
        *report.auroc_ci,
        report.auprc,
        report.brier,
        report.ece,
    )
    return report


# --------------------------------------------------------------------------- plots


def _new_figure(figsize: tuple[float, float]):
    """A Figure attached to its own Agg canvas: no pyplot, no global backend, nothing to leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    fig.clear()
    log.debug("wrote %s", path)
    return path


def plot_roc(y, p, path: str | os.PathLike) -> Path:
    """ROC curve as PNG with the AUROC in the legend; returns the path."""
    y, p = _check_inputs(y, p)
    _require_both_classes(y, "ROC curve")
    fpr, tpr, _ = skm.roc_curve(y, p)
    fig = _new_figure((5, 5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"model (AUROC = {auroc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUROC = 0.5)")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"ROC (n={len(y)}, positives={int(y.sum())})")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted and observed rate per non-empty quantile bin (same bins as the ECE)."""
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    keep = count > 0
    mean_p = np.bincount(ids, weights=p, minlength=n_bins)[keep] / count[keep]
    mean_y = np.bincount(ids, weights=y, minlength=n_bins)[keep] / count[keep]
    return mean_p, mean_y


def plot_calibration(y, p, path: str | os.PathLike, n_bins: int = 10, p_uncalibrated=None) -> Path:
    """Reliability diagram (quantile bins, as the ECE) with a histogram of predictions below.

    ``p_uncalibrated`` (e.g. the raw model scores before Platt/isotonic calibration) is drawn
    as a second curve so the effect of calibration is visible in one picture.
    """
    y, p = _check_inputs(y, p)
    _check_bins(n_bins, "quantile")
    curves = [("calibrated" if p_uncalibrated is not None else "model", p)]
    if p_uncalibrated is not None:
        _, p_uncal = _check_inputs(y, p_uncalibrated)
        curves.append(("uncalibrated", p_uncal))
    fig = _new_figure((5, 6))
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for (label, probs), marker in zip(curves, ("o", "s"), strict=False):
        mean_p, mean_y = _reliability(y, probs, n_bins)
        ece = expected_calibration_error(y, probs, n_bins=n_bins)
        ax.plot(mean_p, mean_y, marker=marker, lw=1.5, label=f"{label} (ECE = {ece:.3f})")
        hist.hist(probs, bins=40, range=(0, 1), histtype="step", lw=1.5, label=label)
    ax.set(ylabel="Observed readmission rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Calibration ({n_bins} equal-count bins, n={len(y)})")
    ax.legend(loc="upper left")
    hist.set(xlabel="Predicted probability", ylabel="Rows")
    return _save(fig, path)


def plot_top_features(
    names: Sequence[str], importances: Sequence[float] | np.ndarray, path: str | os.PathLike, top_k: int = 20
) -> Path:
    """Horizontal bars of the top_k features by mean |contribution| (e.g. mean |SHAP|), largest on top."""
    names = [str(n) for n in names]
    imp = np.asarray(importances, dtype=np.float64).ravel()
    if len(names) != len(imp):
        raise ValueError(f"names and importances have different lengths ({len(names)} vs {len(imp)})")
    if len(names) == 0:
        raise ValueError("empty input: no features to plot")
    if not np.isfinite(imp).all():
        raise ValueError("importances contain NaN or infinite values")
    if top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    top = np.argsort(-np.abs(imp), kind="stable")[:top_k][::-1]
    fig = _new_figure((7, 1.0 + 0.3 * len(top)))
    ax = fig.add_subplot()
    ax.barh([names[i] for i in top], imp[top], color="tab:blue")
    ax.set_xlabel("mean |contribution|")
    ax.set_title(f"Top {len(top)} of {len(names)} features")
    return _save(fig, path)


def save_plots(y, p, names, importances, out_dir: str | os.PathLike, p_uncalibrated=None) -> dict[str, Path]:
    """Write roc.png, calibration.png and top_features.png into out_dir (created if missing)."""
    out_dir = Path(out_dir)
    return {
        "roc": plot_roc(y, p, out_dir / "roc.png"),
        "calibration": plot_calibration(y, p, out_dir / "calibration.png", p_uncalibrated=p_uncalibrated),
        "top_features": plot_top_features(names, importances, out_dir / "top_features.png"),
    }
