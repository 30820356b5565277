"""The statistics behind `monitor decide`: DeLong, alpha spending, confidence sequences, sample
ratio, live metrics and estimates before outcomes. No Ray, no service."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from monitor.metrics import expected_auroc, expected_brier, performance
from monitor.rule import AurocLook, Bound, Evidence, Gate, RuleConfig, evaluate
from monitor.stats import (
    confidence_sequence,
    delong,
    obf_spending,
    running_confidence_sequence,
    spending_boundaries,
    srm_test,
)


def _two_models(n: int, seed: int, sd_b: float = 0.8):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(-1.8 + 1.5 * z)))
    shared = rng.normal(size=n)
    a = z + (np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.normal(size=n))
    b = z + sd_b * (np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.normal(size=n))
    return a, b, y


def test_obrien_fleming_boundaries_for_four_equal_looks() -> None:
    bounds = spending_boundaries([0.25, 0.5, 0.75, 1.0], 0.025)
    assert bounds == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=1e-3)
    # All alpha is spent by the last look, and the boundaries fall as information grows.
    assert obf_spending(1.0, 0.025) == pytest.approx(0.025)
    assert all(x > y for x, y in zip(bounds, bounds[1:], strict=False))


def test_skipped_looks_spend_nothing_and_unequal_looks_are_allowed() -> None:
    # One look at full information is the fixed-sample test.
    assert spending_boundaries([1.0], 0.025) == pytest.approx([1.95996], abs=1e-4)
    uneven = spending_boundaries([0.3, 0.45, 1.0], 0.025)
    assert uneven[-1] < 2.1 and uneven[0] > 3.5
    with pytest.raises(ValueError, match="information times must be increasing and positive"):
        spending_boundaries([0.5, 0.4], 0.025)


def test_group_sequential_error_under_the_null_is_alpha() -> None:
    """Monte Carlo of 10 looks on a random walk: crossing rate close to the one-sided 0.025."""
    rng = np.random.default_rng(3)
    times = np.arange(1, 11) / 10
    bounds = np.array(spending_boundaries(list(times), 0.025))
    increments = rng.normal(size=(40000, 10)) * np.sqrt(0.1)
    z = np.cumsum(increments, axis=1) / np.sqrt(times)
    crossed = (z >= bounds).any(axis=1).mean()
    assert 0.02 < crossed < 0.03


def test_delong_matches_sklearn_and_a_paired_bootstrap() -> None:
    a, b, y = _two_models(2000, seed=1)
    test = delong(a, b, y)
    assert test.auc_a == pytest.approx(roc_auc_score(y, a))
    assert test.auc_b == pytest.approx(roc_auc_score(y, b))
    rng = np.random.default_rng(7)
    diffs = []
    for _ in range(400):
        i = rng.integers(0, len(y), len(y))
        diffs.append(roc_auc_score(y[i], b[i]) - roc_auc_score(y[i], a[i]))
    boot_se = float(np.std(diffs, ddof=1))
    assert abs(test.se - boot_se) / boot_se < 0.10
    # Ties get midranks: a constant score has AUROC 0.5.
    assert delong(np.zeros(len(y)), b, y).auc_a == pytest.approx(0.5)


def test_confidence_sequence_holds_at_every_look_where_a_fixed_interval_does_not() -> None:
    rng = np.random.default_rng(5)
    looks = np.arange(50, 3001, 50) - 1
    cs_misses = ci_misses = 0
    runs = 400
    for _ in range(runs):
        values = rng.normal(0.0, 1.0, 3000)
        mean, low, high = running_confidence_sequence(values, alpha=0.05, n_opt=1000)
        cs_misses += bool(((low[looks] > 0) | (high[looks] < 0)).any())
        n = looks + 1
        sd = np.sqrt(np.cumsum(values**2)[looks] / n - mean[looks] ** 2)
        half = 1.96 * sd / np.sqrt(n)
        ci_misses += bool(((mean[looks] - half > 0) | (mean[looks] + half < 0)).any())
    assert cs_misses / runs <= 0.06  # valid under continuous monitoring
    assert ci_misses / runs > 0.15  # the fixed-sample interval, checked 60 times, is not
    single = confidence_sequence(rng.normal(1.0, 1.0, 500), alpha=0.05, n_opt=500)
    assert single.lower < 1.0 < single.upper and single.lower > 0.5


def test_sample_ratio_mismatch() -> None:
    assert srm_test({"a": 905, "b": 95}, {"a": 0.9, "b": 0.1}).p_value > 0.1
    assert srm_test({"a": 500, "b": 500}, {"a": 0.9, "b": 0.1}).p_value < 1e-6
    assert srm_test({"a": 10}, {"a": 1.0}).p_value == 1.0  # one arm: nothing to test


def test_performance_figures_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(1.2, 6, 4000)
    y = rng.random(4000) < p  # calibrated by construction
    perf = performance(p, y, threshold=0.25, n_boot=100)
    assert perf.auroc.value == pytest.approx(roc_auc_score(y, p))
    assert perf.brier.value == pytest.approx(brier_score_loss(y, p))
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.25).ravel()
    assert perf.confusion == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert perf.sensitivity.value == pytest.approx(tp / (tp + fn))
    assert perf.ppv.value == pytest.approx(tp / (tp + fp))
    assert perf.calibration_slope.low < 1.0 < perf.calibration_slope.high
    assert perf.observed_expected.low < 1.0 < perf.observed_expected.high
    assert perf.ece.value < 0.03
    assert perf.auprc.low < perf.auprc.value < perf.auprc.high
    # An overconfident model (logit x 2) is caught by the calibration slope.
    logit = np.log(p / (1 - p))
    over = 1 / (1 + np.exp(-(2 * logit + 1.5)))
    assert performance(over, y, 0.25, n_boot=0).calibration_slope.high < 0.8


def test_estimates_before_outcomes_match_realized_figures_for_calibrated_probabilities() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(1.2, 6, 20000)
    y = rng.random(20000) < p
    assert expected_auroc(p) == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert expected_brier(p) == pytest.approx(brier_score_loss(y, p), abs=0.003)
    # When the relation changes (outcomes no longer follow p), the estimate and reality part.
    shuffled = rng.permutation(y)
    assert expected_auroc(p) - roc_auc_score(shuffled, p) > 0.15


# --------------------------------------------------------------------------- the rule


def _evidence(**over) -> Evidence:
    base = dict(
        labelled=1000,
        events=150,
        days=60.0,
        brier=Bound(-0.004, -0.007, -0.001, 1000),
        auroc=None,
        gates=(Gate("sample_ratio", True, "ok"), Gate("calibration", True, "ok")),
    )
    base.update(over)
    return Evidence(**base)


def test_rule_outcomes() -> None:
    rule = RuleConfig()
    assert evaluate(rule, _evidence()).outcome == "promote"
    assert evaluate(rule, _evidence(brier=Bound(0.004, 0.001, 0.007, 1000))).outcome == "rollback"
    unclear = Bound(0.0, -0.003, 0.003, 1000)
    assert evaluate(rule, _evidence(brier=unclear)).outcome == "keep_testing"
    assert evaluate(rule, _evidence(brier=unclear, labelled=5000)).outcome == "inconclusive"
    assert evaluate(rule, _evidence(brier=unclear, days=200)).rule == "max_days"
    # AUROC crossing promotes in superiority mode unless the Brier bound shows harm.
    up = AurocLook(look=2, n=1000, information=0.2, diff=0.04, z=4.6, boundary=4.4)
    assert evaluate(rule, _evidence(brier=unclear, auroc=up)).rule == "auroc_above_upper_boundary"
    down = AurocLook(look=2, n=1000, information=0.2, diff=-0.04, z=-4.6, boundary=4.4)
    assert evaluate(rule, _evidence(brier=unclear, auroc=down)).outcome == "rollback"
    # Non-inferiority: a challenger a little worse than the champion, bounded under the margin.
    ni = RuleConfig(mode="non_inferiority", margin=0.002)
    slightly_worse = Bound(0.0005, -0.0005, 0.0015, 3000)
    assert evaluate(ni, _evidence(brier=slightly_worse)).outcome == "promote"
    assert evaluate(rule, _evidence(brier=slightly_worse)).outcome == "keep_testing"


def test_gates_block_promotion_and_say_why() -> None:
    rule = RuleConfig()
    srm = evaluate(rule, _evidence(gates=(Gate("sample_ratio", False, "split 50/50 against 90/10"),)))
    assert srm.outcome == "keep_testing" and srm.rule == "sample_ratio_mismatch"
    blocked = evaluate(rule, _evidence(gates=(Gate("feedback_coverage", False, "coverage 40%"),)))
    assert blocked.outcome == "keep_testing" and any("coverage 40%" in r for r in blocked.reasons)
    few = evaluate(rule, _evidence(labelled=100, events=10))
    assert few.outcome == "keep_testing" and any("need" in r or "needs" in r for r in few.reasons)
    guard = Gate("calibration_guardrail", False, "O/E 1.6", kind="guardrail")
    assert evaluate(rule, _evidence(gates=(guard,))).outcome == "rollback"
    pending_guard = Gate("calibration_guardrail", True, "too few", kind="guardrail", pending=True)
    assert evaluate(rule, _evidence(gates=(pending_guard,))).outcome == "promote"


def test_rule_config_is_checked_and_hashed() -> None:
    with pytest.raises(ValueError, match=r"calibration_slope: need 0 < low < 1 < high, got 1.2, 0.8"):
        RuleConfig(calibration_slope=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"unknown\n.*Extra inputs are not permitted"):
        RuleConfig(unknown=1)
    assert RuleConfig().digest() == RuleConfig().digest() != RuleConfig(margin=0.003).digest()
    assert RuleConfig(max_labels=5000, looks=10).look_at(3) == 1500
