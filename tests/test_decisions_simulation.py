"""A small seeded run of bench/decisions.py: the engine's rule against the naive chi-square."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2_contingency

BENCH = Path(__file__).resolve().parents[1] / "bench" / "decisions.py"


@pytest.fixture(scope="module")
def decisions():
    spec = importlib.util.spec_from_file_location("bench_decisions", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(decisions):
    return decisions.simulate(
        experiments=150,
        seed=0,
        max_labels=2000,
        look_every=50,
        scenario_names=("null", "better_auroc_0.03"),
        reference_n=20_000,
        truth_n=100_000,
    )


def row(report, scenario, method):
    return next(r for r in report["scenarios"][scenario]["methods"] if r["method"] == method)


def test_rates_are_shares(report):
    """Each rate is the share of the experiments that ended in its outcome (None where the
    scenario and mode define no such error or power, e.g. promoting a better challenger)."""
    for facts in report["scenarios"].values():
        for r in facts["methods"]:
            counts, n = r["counts"], r["experiments"]
            assert sum(counts.values()) == n == 150
            assert r["wrong_rollback"] == round(counts["rollback"] / n, 4), r  # neither scenario is worse
            assert r["wrong_promotion"] in (None, round(counts["promote"] / n, 4)), r
            if r["power"] is not None:
                won = {"promote": counts["promote"], "rollback": counts["rollback"],
                       "not_promote": n - counts["promote"]}[r["power_means"]]  # fmt: skip
                assert r["power"] == round(won / n, 4), r


def test_naive_chi_square_promotes_a_useless_challenger_more_often_than_the_engine(report):
    naive = row(report, "null", "naive_chi_square")["wrong_promotion"]
    engine = row(report, "null", "engine_superiority_paired")["wrong_promotion"]
    assert naive > engine
    assert naive > 0.05  # 40 looks at p < 0.05 inflate the naive test's error


def test_engine_promotes_the_better_challenger_more_often(report):
    better = row(report, "better_auroc_0.03", "engine_superiority_paired")
    null = row(report, "null", "engine_superiority_paired")
    assert better["promote"] > null["promote"] + 0.2
    assert better["power"] == better["promote"] and null["power"] is None
    assert better["wrong_promotion"] is None  # promoting a better challenger is not wrong


def test_scenario_facts(report):
    null, better = report["scenarios"]["null"], report["scenarios"]["better_auroc_0.03"]
    assert null["true_auroc_diff"] == pytest.approx(0.0, abs=0.01)
    assert better["true_auroc_diff"] == pytest.approx(0.03, abs=0.01)
    assert better["true_brier_diff"] < 0


def test_chi_square_matches_scipy(decisions):
    rng = np.random.default_rng(0)
    tables = rng.integers(1, 200, size=(50, 2, 2)).astype(float)
    ours = decisions.chi_square_p(tables)
    theirs = [chi2_contingency(t, correction=False).pvalue for t in tables]
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert decisions.chi_square_p(np.array([[5.0, 0.0], [7.0, 0.0]])) == 1.0  # a zero margin
