"""ml.metrics: agrees with sklearn, behaves on the textbook cases, the vectorised bootstrap equals
the per-resample computation, group bootstrap widens CIs for correlated rows, bad input fails
loudly, and plots are real PNG files. No Ray; the whole file runs in a few seconds."""

from __future__ import annotations

import functools
import json
import logging
import math
import re

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ml import metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n: int, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated risks skewed to low values (~15% positives), like readmission."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 6.0, n)
    if ties:
        p = np.round(p, 2)
    y = (rng.random(n) < p).astype(int)
    return y, p


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


# --------------------------------------------------------------------------- point metrics


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn(ties):
    y, p = _data(3000, seed=1, ties=ties)
    assert M.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert M.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 17])
def test_ece_equals_weighted_gap_of_sklearn_calibration_curve(strategy, n_bins):
    y, p = _data(3000, seed=2, ties=True)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    if strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    expected = float(np.sum(counts / len(y) * np.abs(prob_true - prob_pred)))
    assert M.expected_calibration_error(y, p, n_bins=n_bins, strategy=strategy) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_perfect_predictions(strategy):
    y = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 0] * 20)
    p = y.astype(float)
    assert M.auroc(y, p) == 1.0
    assert M.auprc(y, p) == 1.0
    assert M.brier(y, p) == 0.0
    assert M.expected_calibration_error(y, p, strategy=strategy) == 0.0


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_constant_base_rate_is_calibrated_but_uninformative(strategy):
    y, _ = _data(2000, seed=3)
    p = np.full(len(y), y.mean())
    assert M.expected_calibration_error(y, p, strategy=strategy) == pytest.approx(0.0, abs=1e-12)
    assert M.auroc(y, p) == 0.5
    assert M.auprc(y, p) == pytest.approx(y.mean())


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_miscalibrated_predictor_has_larger_ece(strategy):
    y, p = _data(5000, seed=4)
    calibrated = M.expected_calibration_error(y, p, strategy=strategy)
    cubed = M.expected_calibration_error(y, p**3, strategy=strategy)
    assert calibrated < 0.02
    assert cubed > 5 * calibrated
    # Same ranking, so discrimination is unchanged while calibration (and Brier) got worse.
    assert M.auroc(y, p**3) == pytest.approx(M.auroc(y, p))
    assert M.brier(y, p**3) > M.brier(y, p)


# --------------------------------------------------------------------------- bootstrap


def _per_resample(metric):
    """The same metric as an opaque callable, which forces bootstrap_ci's per-resample loop."""

    def wrapped(y, p):
        return metric(y, p)

    wrapped.needs_both_classes = M._needs_both_classes(metric)
    return wrapped


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(
    "metric",
    [
        M.auroc,
        M.auprc,
        M.brier,
        M.expected_calibration_error,
        functools.partial(M.expected_calibration_error, n_bins=7, strategy="uniform"),
    ],
    ids=["auroc", "auprc", "brier", "ece", "ece_uniform7"],
)
def test_vectorised_bootstrap_equals_metric_on_each_resample(metric, grouped):
    y, p = _data(800, seed=5, ties=True)
    groups = np.random.default_rng(0).integers(0, 200, len(y)) if grouped else None
    fast = M._bootstrap_values({"m": metric}, y, p, n_boot=40, seed=7, groups=groups)["m"]
    slow = M._bootstrap_values({"m": _per_resample(metric)}, y, p, n_boot=40, seed=7, groups=groups)["m"]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    assert M.bootstrap_ci(metric, y, p, n_boot=40, seed=7, groups=groups) == pytest.approx(
        M.bootstrap_ci(_per_resample(metric), y, p, n_boot=40, seed=7, groups=groups), abs=1e-12
    )


def test_ci_contains_estimate_and_narrows_with_more_data():
    small_y, small_p = _data(300, seed=6)
    big_y, big_p = _data(6000, seed=6)
    for metric in (M.auroc, M.auprc, M.brier):
        small = M.bootstrap_ci(metric, small_y, small_p, n_boot=300)
        big = M.bootstrap_ci(metric, big_y, big_p, n_boot=300)
        assert small[0] < metric(small_y, small_p) < small[1]
        assert big[0] < metric(big_y, big_p) < big[1]
        assert _width(big) < 0.5 * _width(small), metric.__name__
    # ECE of a clearly miscalibrated model (the bootstrap adds upward bias near zero, so a
    # calibrated model's point ECE can sit at the bottom edge of its percentile interval).
    lo, hi = M.bootstrap_ci(M.expected_calibration_error, big_y, big_p**2, n_boot=300)
    assert lo < M.expected_calibration_error(big_y, big_p**2) < hi


def test_group_bootstrap_is_wider_on_duplicated_rows():
    y, p = _data(400, seed=8)
    copies = 5
    y_dup, p_dup = np.repeat(y, copies), np.repeat(p, copies)
    patient = np.repeat(np.arange(len(y)), copies)
    for metric in (M.auroc, M.brier):
        by_row = M.bootstrap_ci(metric, y_dup, p_dup, n_boot=300)
        by_patient = M.bootstrap_ci(metric, y_dup, p_dup, n_boot=300, groups=patient)
        original = M.bootstrap_ci(metric, y, p, n_boot=300)
        # Rows of one patient are not independent evidence: ~sqrt(5) wider than the row bootstrap.
        assert _width(by_patient) > 1.6 * _width(by_row), metric.__name__
        # Both metrics are invariant to duplicating every row, and drawing 400 patients with a seed
        # draws the same multiset as drawing 400 rows of the de-duplicated data: identical CIs.
        assert by_patient == pytest.approx(original, abs=1e-12), metric.__name__


def test_group_ids_can_be_strings():
    y, p = _data(500, seed=9)
    groups = np.array([f"patient-{i % 120}" for i in range(len(y))])
    lo, hi = M.bootstrap_ci(M.auroc, y, p, n_boot=100, groups=groups)
    assert lo < M.auroc(y, p) < hi


def test_single_class_resamples_are_skipped_with_a_warning(caplog):
    y = np.zeros(100, dtype=int)
    y[[10, 60]] = 1  # ~13% of resamples draw neither positive
    p = np.linspace(0.01, 0.99, 100)
    with caplog.at_level(logging.WARNING, logger="ml.metrics"):
        lo, hi = M.bootstrap_ci(M.auroc, y, p, n_boot=200)
    # The CI comes from the resamples that were kept and still brackets the estimate (measured:
    # 0.061 < 0.352 < 0.680, 39 of 200 resamples skipped).
    assert lo < M.auroc(y, p) < hi
    assert re.search(r"skipped \d+ of 200 resamples with a single class", caplog.text), caplog.text
    # Brier does not need both classes, so nothing is skipped.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ml.metrics"):
        M.bootstrap_ci(M.brier, y, p, n_boot=200)
    assert "single class" not in caplog.text


def test_bootstrap_is_reproducible_and_seed_dependent():
    y, p = _data(500, seed=10)
    assert M.bootstrap_ci(M.auroc, y, p, n_boot=100, seed=3) == M.bootstrap_ci(
        M.auroc, y, p, n_boot=100, seed=3
    )
    assert M.bootstrap_ci(M.auroc, y, p, n_boot=100, seed=3) != M.bootstrap_ci(
        M.auroc, y, p, n_boot=100, seed=4
    )


# --------------------------------------------------------------------------- report


def test_evaluate_report_and_its_exports():
    y, p = _data(2000, seed=11)
    groups = np.arange(len(y)) // 2
    report = M.evaluate(y, p, n_boot=200, seed=5, groups=groups)
    assert report.n == 2000 and report.positives == int(y.sum())
    assert report.auroc == pytest.approx(skm.roc_auc_score(y, p))
    for name, metric in [("auroc", M.auroc), ("auprc", M.auprc), ("brier", M.brier)]:
        # Shared resamples: the same CI as bootstrap_ci with the same seed and groups.
        ci = getattr(report, f"{name}_ci")
        assert ci == M.bootstrap_ci(metric, y, p, n_boot=200, seed=5, groups=groups)
        assert ci[0] < getattr(report, name) < ci[1]

    d = report.as_dict()
    assert set(d) == {
        f"test_{k}"
        for k in (
            "auroc",
            "auroc_ci",
            "auprc",
            "auprc_ci",
            "brier",
            "brier_ci",
            "ece",
            "ece_ci",
            "n",
            "positives",
        )
    }
    assert d["test_auroc_ci"] == list(report.auroc_ci)
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert set(report.as_dict(prefix="val_")) == {k.replace("test_", "val_", 1) for k in d}

    ml = report.mlflow_metrics()
    assert all(type(v) is float for v in ml.values())
    assert ml["test_auroc_ci_low"] == report.auroc_ci[0] and ml["test_ece_ci_high"] == report.ece_ci[1]
    assert len(ml) == 4 * 3 + 2


def test_evaluate_without_bootstrap_gives_strict_json():
    y, p = _data(300, seed=12)
    report = M.evaluate(y, p, n_boot=0)
    assert all(math.isnan(v) for v in report.auroc_ci)
    json.dumps(report.as_dict(), allow_nan=False)
    assert report.as_dict()["test_auroc_ci"] == [None, None]
    assert set(report.mlflow_metrics()) == {
        f"test_{k}" for k in ("auroc", "auprc", "brier", "ece", "n", "positives")
    }


# --------------------------------------------------------------------------- bad input

GOOD_Y = np.array([0, 1, 0, 1])
GOOD_P = np.array([0.1, 0.8, 0.3, 0.6])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        (GOOD_Y, GOOD_P[:3], r"different lengths \(4 vs 3\)"),
        ([], [], "empty input"),
        (GOOD_Y, [0.1, 1.2, 0.3, 0.6], r"probabilities in \[0, 1\].*1\.2"),
        (GOOD_Y, [0.1, -0.2, 0.3, 0.6], r"probabilities in \[0, 1\]"),
        (GOOD_Y, [0.1, np.nan, 0.3, 0.6], "1 NaN"),
        (GOOD_Y, [0.1, np.inf, 0.3, 0.6], r"probabilities in \[0, 1\]"),
        ([0, 2, 0, 1], GOOD_P, "only 0/1 labels.*2"),
        ([0, 0.5, 0, 1], GOOD_P, "only 0/1 labels"),
        ([0, np.nan, 0, 1], GOOD_P, "only 0/1 labels"),
        (["no", "yes", "no", "yes"], GOOD_P, "only 0/1 labels.*'yes'"),
        (GOOD_Y, np.c_[1 - GOOD_P, GOOD_P], r"1-D.*p\[:, 1\]"),
    ],
    ids=[
        "lengths",
        "empty",
        "above_1",
        "below_0",
        "nan",
        "inf",
        "label_2",
        "label_half",
        "label_nan",
        "label_str",
        "2d",
    ],
)
@pytest.mark.parametrize("metric", [M.auroc, M.auprc, M.brier, M.expected_calibration_error, M.evaluate])
def test_bad_input_raises(metric, y, p, match):
    with pytest.raises(ValueError, match=match):
        metric(y, p)


@pytest.mark.parametrize("metric", [M.auroc, M.auprc])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_rejected_where_undefined(metric, label):
    y = np.full(4, label)
    with pytest.raises(ValueError, match=f"needs both classes.*only class {label}"):
        metric(y, GOOD_P)
    with pytest.raises(ValueError, match="needs both classes"):
        M.bootstrap_ci(metric, y, GOOD_P, n_boot=10)
    with pytest.raises(ValueError, match="needs both classes"):
        M.evaluate(y, GOOD_P, n_boot=0)
    # Calibration metrics are still defined.
    # (measured: 0.275 in [0.127, 0.440] for label 0, 0.375 in [0.247, 0.606] for label 1)
    assert M.brier(y, GOOD_P) == pytest.approx(np.mean((GOOD_P - y) ** 2))
    low, high = M.bootstrap_ci(M.brier, y, GOOD_P, n_boot=10)
    assert low < M.brier(y, GOOD_P) < high


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "n_bins must be a positive integer"),
        ({"strategy": "equal"}, "strategy must be one of"),
    ],
)
def test_bad_ece_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.expected_calibration_error(GOOD_Y, GOOD_P, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_boot": 0}, "n_boot must be a positive integer"),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\)"),
        ({"groups": [1, 2, 3]}, "one id per row"),
        ({"groups": [1.0, np.nan, 2.0, 2.0]}, "NaN ids"),
    ],
)
def test_bad_bootstrap_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.bootstrap_ci(M.brier, GOOD_Y, GOOD_P, **kwargs)


# --------------------------------------------------------------------------- plots


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path


def test_save_plots_writes_pngs(tmp_path):
    y, p = _data(1000, seed=14)
    names = [f"feature_{i}" for i in range(30)]
    importances = np.random.default_rng(0).exponential(size=30)
    out = tmp_path / "nested" / "plots"
    paths = M.save_plots(y, p, names, importances, out, p_uncalibrated=p**2)
    assert paths == {
        "roc": out / "roc.png",
        "calibration": out / "calibration.png",
        "top_features": out / "top_features.png",
    }
    for path in paths.values():
        _assert_png(path)


def test_individual_plots(tmp_path):
    y, p = _data(500, seed=15)
    _assert_png(M.plot_roc(y, p, tmp_path / "a" / "roc.png"))
    _assert_png(M.plot_calibration(y, p, str(tmp_path / "b" / "cal.png"), n_bins=5))
    _assert_png(
        M.plot_top_features(["age", "n_prior_admissions"], [0.3, 0.7], tmp_path / "c" / "top.png", top_k=5)
    )


def test_plot_bad_input(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        M.plot_top_features(["a", "b"], [1.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty input"):
        M.plot_top_features([], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="needs both classes"):
        M.plot_roc(np.zeros(4), GOOD_P, tmp_path / "x.png")
    with pytest.raises(ValueError, match="different lengths"):
        M.plot_calibration(GOOD_Y, GOOD_P, tmp_path / "x.png", p_uncalibrated=GOOD_P[:2])
    assert not (tmp_path / "x.png").exists()
