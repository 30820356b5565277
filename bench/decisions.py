"""How often the champion/challenger decision rule is wrong: a seeded Monte Carlo simulation of
`monitor.rule.evaluate`, the function that acts on the registry, against the seed design's naive
chi-square test.

Why: a rule that is checked every day can look fine on one experiment and still promote a useless
challenger far more often than its alpha says. Only a simulation with a known truth shows the
error rates of the rule as it is used (many looks, delayed and missing labels).

Data-generating model (one patient):

- latent z ~ N(0, 1); outcome y ~ Bernoulli(sigmoid(-2.6 + 1.6 z)) (prevalence about 13%);
- a model's score s = z + sd * e, e = sqrt(0.5) c + sqrt(0.5) u, where c ~ N(0, 1) is shared by
  both models of a patient and u ~ N(0, 1) is the model's own (so their errors correlate, 0.5);
- a model's probability p = sigmoid(a + b s), a and b fitted once per scenario by
  LogisticRegression on a reference sample of 100,000 patients (calibrated models);
- champion sd = 1.0. Challenger, per scenario: `null` same sd (own noise independent);
  `better_auroc_0.03` sd found by bisection so that its AUROC is the champion's + 0.03;
  `worse_by_margin` sd found by bisection so that the mean Brier difference (challenger -
  champion) equals RuleConfig().margin; `clearly_worse` AUROC - 0.05 (bisection);
  `miscalibrated` the champion's sd but p = sigmoid(1.6 (a + b s) + 0.4): overconfident
  (calibration slope 1/1.6); over-predicting at high risk but, measured, under-predicting on
  average (mean p 0.095 against a prevalence of 0.135). The true AUROCs and Brier difference of
  every scenario are measured on an independent sample of 1,000,000 patients and reported.
- time: patients arrive at `--rate` per day (default 50), 80% of outcomes are recorded (missing
  at random), an outcome is known 30 days after its prediction, so labels arrive in arrival
  order. Days at a look = 30 + arrivals needed / rate. (At 40 per day, 5,000 labels need about
  186 days and the rule's max_days = 180 would end every test near 4,800 labels; 50 per day
  keeps the planned 100 looks inside 180 days, and the days are passed to the rule.)
- looks after every `--look-every` (50) labelled patients up to `--max-labels` (5,000).

Methods (the same patients in all methods of one experiment, and in all scenarios):

- `engine_superiority_paired` / `engine_non_inferiority_paired`: `evaluate(RuleConfig(mode=...,
  max_labels=--max-labels), Evidence(...))` at every look, shadow scoring (both models score every
  patient). Brier channel: `running_confidence_sequence(d, config.channel_alpha,
  config.cs_n_opt)` at every look. AUROC channel: planned look k at the first look with labelled
  >= config.look_at(k), z from `delong(p_champion, p_challenger, y)` on the labelled pairs and
  the boundary from `spending_boundaries(times so far, config.channel_alpha)`, information time
  labelled / max_labels. Gates: only minimum labels / events (Evidence.labelled / events); the
  sample-ratio, coverage, calibration and subgroup gates are exercised by the engine's tests, not
  here. Stops at the first promote, rollback or inconclusive.
- `naive_chi_square`: the seed design. Two arms (50/50 random split, no shadow); a prediction is
  correct when (p >= 0.25) == y; chi-square (scipy's chi2_contingency formula, no continuity
  correction) of correct / incorrect by arm at every look; promote when p < 0.05 and the
  challenger's accuracy is higher, roll back when p < 0.05 and it is lower.
- `engine_superiority_unpaired`: the engine's rule without shadow scoring: 50/50 arms, Brier via
  the pseudo-outcome phi_i = brier_i (1{challenger}/0.5 - 1{champion}/0.5) in the same
  confidence sequence, no AUROC channel, labelled / events = the smaller arm's. The rule's
  max_labels counts the smaller arm, so at 5,000 labels in total it still says keep_testing.

Definitions:

- `wrong_promotion`: share of experiments that promote a challenger that is not better
  (superiority mode and the naive test: null, worse_by_margin, clearly_worse, miscalibrated), or
  one worse by the margin or more (non-inferiority mode: worse_by_margin, clearly_worse, and
  miscalibrated if its true Brier difference >= margin). None where it does not apply.
- `wrong_rollback`: share that roll back a challenger that is not worse (null, better_auroc_0.03).
- `power`: share taking the correct action within max labels: better_auroc_0.03 -> promote (both
  modes; null in non-inferiority mode -> promote too); clearly_worse, miscalibrated and (in
  superiority mode) worse_by_margin -> rollback; worse_by_margin in non-inferiority mode -> not
  promote; null in superiority mode -> None.
- `median_n` / `median_days`: over experiments that decided (promote or rollback).

Run:

    python bench/decisions.py --json bench/results/decisions.json [--experiments 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

from monitor.rule import AurocLook, Bound, Evidence, RuleConfig, evaluate  # noqa: E402
from monitor.stats import auroc_components, delong, running_confidence_sequence, spending_boundaries  # noqa: E402

SCENARIOS = ("null", "better_auroc_0.03", "worse_by_margin", "clearly_worse", "miscalibrated")
METHODS = (
    "engine_superiority_paired",
    "engine_non_inferiority_paired",
    "naive_chi_square",
    "engine_superiority_unpaired",
)
ENGINE_METHODS = ("engine_superiority_paired", "engine_non_inferiority_paired", "engine_superiority_unpaired")
INTERCEPT, SLOPE = -2.6, 1.6  # true outcome model on the latent z
CHAMPION_SD = 1.0
SHARED = math.sqrt(0.5)  # weight of the shared and of the own noise in e
HIGH_RISK = 0.25  # the seed design's threshold for a "correct" prediction
NAIVE_P = 0.05
MATURITY_DAYS = 30.0
WRONG_PROMOTION_LIMIT = 0.05
POWER_TARGET = 0.80


# --------------------------------------------------------------------------- models and scenarios


@dataclass(frozen=True)
class Model:
    """p = sigmoid(scale * (a + b s) + shift) with s = z + sd * (sqrt(.5) c + sqrt(.5) u)."""

    sd: float
    a: float = 0.0
    b: float = 1.0
    scale: float = 1.0
    shift: float = 0.0

    def score(self, z: np.ndarray, c: np.ndarray, u: np.ndarray) -> np.ndarray:
        return z + self.sd * (SHARED * c + SHARED * u)

    def prob(self, z: np.ndarray, c: np.ndarray, u: np.ndarray) -> np.ndarray:
        return expit(self.scale * (self.a + self.b * self.score(z, c, u)) + self.shift)


@dataclass
class Patients:
    z: np.ndarray
    c: np.ndarray
    u_champion: np.ndarray
    u_challenger: np.ndarray
    y: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> Patients:
        z, c, u0, u1 = rng.standard_normal((4, n))
        y = rng.random(n) < expit(INTERCEPT + SLOPE * z)
        return cls(z, c, u0, u1, y)

    def probs(self, champion: Model, challenger: Model) -> tuple[np.ndarray, np.ndarray]:
        return (
            champion.prob(self.z, self.c, self.u_champion),
            challenger.prob(self.z, self.c, self.u_challenger),
        )


def calibrated(sd: float, reference: Patients, own: str = "u_champion") -> Model:
    """The calibrated logistic map of a model's score, fitted on the reference sample."""
    s = Model(sd).score(reference.z, reference.c, getattr(reference, own))
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(s[:, None], reference.y)
    return Model(sd, float(fit.intercept_[0]), float(fit.coef_[0, 0]))


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    return auroc_components(p, y)[0]


def bisect(f, lo: float, hi: float, target: float, iterations: int = 40) -> float:
    """x in [lo, hi] with f(x) = target for a monotone f (either direction)."""
    f_lo = f(lo) - target
    for _ in range(iterations):
        mid = (lo + hi) / 2
        f_mid = f(mid) - target
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class Scenario:
    name: str
    champion: Model
    challenger: Model
    facts: dict[str, Any] = field(default_factory=dict)


def build_scenarios(
    seed: int, margin: float, reference_n: int, truth_n: int, names: tuple[str, ...] = SCENARIOS
) -> dict[str, Scenario]:
    """Challenger maps per scenario (bisection on a fixed sample, common random numbers), then
    their true AUROC and Brier difference on an independent large sample."""
    rng = np.random.default_rng([seed, 10_000])
    reference = Patients.draw(rng, reference_n)
    tuning = Patients.draw(rng, truth_n)  # for the bisections
    truth = Patients.draw(rng, truth_n)  # for the reported facts
    champion = calibrated(CHAMPION_SD, reference)
    p0_tuning = champion.prob(tuning.z, tuning.c, tuning.u_champion)
    auc0_tuning = auroc(p0_tuning, tuning.y)
    brier0_tuning = float(np.mean((p0_tuning - tuning.y) ** 2))

    def auc_at(sd: float) -> float:  # AUROC does not depend on the monotone map
        return auroc(Model(sd).score(tuning.z, tuning.c, tuning.u_challenger), tuning.y)

    def brier_diff_at(sd: float) -> float:
        model = calibrated(sd, reference, "u_challenger")
        p1 = model.prob(tuning.z, tuning.c, tuning.u_challenger)
        return float(np.mean((p1 - tuning.y) ** 2)) - brier0_tuning

    out: dict[str, Scenario] = {}
    for name in names:
        if name == "null":
            challenger = calibrated(CHAMPION_SD, reference, "u_challenger")
        elif name == "better_auroc_0.03":
            challenger = calibrated(
                bisect(auc_at, 0.2, CHAMPION_SD, auc0_tuning + 0.03), reference, "u_challenger"
            )
        elif name == "worse_by_margin":
            challenger = calibrated(
                bisect(brier_diff_at, CHAMPION_SD, 3.0, margin), reference, "u_challenger"
            )
        elif name == "clearly_worse":
            challenger = calibrated(
                bisect(auc_at, CHAMPION_SD, 5.0, auc0_tuning - 0.05), reference, "u_challenger"
            )
        elif name == "miscalibrated":
            base = calibrated(CHAMPION_SD, reference, "u_challenger")
            challenger = Model(base.sd, base.a, base.b, scale=1.6, shift=0.4)
        else:
            raise ValueError(f"unknown scenario {name!r}")
        p0, p1 = truth.probs(champion, challenger)
        d = (p1 - truth.y) ** 2 - (p0 - truth.y) ** 2
        auc0, auc1 = auroc(p0, truth.y), auroc(p1, truth.y)
        out[name] = Scenario(
            name,
            champion,
            challenger,
            {
                "challenger_sd": round(challenger.sd, 4),
                "challenger_map": {k: round(v, 4) for k, v in asdict(challenger).items() if k != "sd"},
                "champion_map": {k: round(v, 4) for k, v in asdict(champion).items() if k != "sd"},
                "true_auroc_champion": round(auc0, 4),
                "true_auroc_challenger": round(auc1, 4),
                "true_auroc_diff": round(auc1 - auc0, 4),
                "true_brier_champion": round(float(np.mean((p0 - truth.y) ** 2)), 5),
                "true_brier_challenger": round(float(np.mean((p1 - truth.y) ** 2)), 5),
                "true_brier_diff": round(float(d.mean()), 5),
                "true_brier_diff_se": round(float(d.std(ddof=1) / math.sqrt(len(d))), 6),
                "sd_d": round(float(d.std(ddof=1)), 4),
                "prevalence": round(float(truth.y.mean()), 4),
                "challenger_mean_p": round(float(p1.mean()), 4),
                "truth_n": truth_n,
            },
        )
    return out


# --------------------------------------------------------------------------- one experiment


_BOUNDARIES: dict[tuple[float, ...], float] = {}


def boundary(times: tuple[float, ...], alpha: float) -> float:
    """The boundary of the last of these looks (the earlier ones do not change with later ones)."""
    key = (*times, alpha)
    if key not in _BOUNDARIES:
        _BOUNDARIES[key] = spending_boundaries(list(times), alpha)[-1]
    return _BOUNDARIES[key]


@dataclass(frozen=True)
class Result:
    outcome: str
    n: int  # labelled patients (in total) at the decision or at the end
    days: float
    rule: str


def engine_paired(
    config: RuleConfig,
    looks: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    y: np.ndarray,
    days: np.ndarray,
    aurocs: dict[int, AurocLook],
) -> Result:
    d = (p1 - y) ** 2 - (p0 - y) ** 2
    mean, lower, upper = running_confidence_sequence(d, alpha=config.channel_alpha, n_opt=config.cs_n_opt)
    events = np.cumsum(y)
    k, times = 1, ()
    verdict = None
    for n in looks:
        i = n - 1
        auc = None
        if k <= config.looks and n >= config.look_at(k):
            t = min(n / config.max_labels, 1.0)
            times = (*times, t)
            if n not in aurocs:  # the same DeLong look serves both modes
                test = delong(p0[:n], p1[:n], y[:n])
                aurocs[n] = AurocLook(k, int(n), t, test.diff, test.z, boundary(times, config.channel_alpha))
            auc = aurocs[n]
            while k <= config.looks and n >= config.look_at(k):
                k += 1
        evidence = Evidence(
            labelled=int(n),
            events=int(events[i]),
            days=float(days[i]),
            brier=Bound(float(mean[i]), float(lower[i]), float(upper[i]), int(n)),
            auroc=auc,
            paired=True,
        )
        verdict = evaluate(config, evidence)
        if verdict.outcome != "keep_testing":
            return Result(verdict.outcome, int(n), float(days[i]), verdict.rule)
    return Result("keep_testing", int(looks[-1]), float(days[looks[-1] - 1]), verdict.rule if verdict else "")


def engine_unpaired(
    config: RuleConfig,
    looks: np.ndarray,
    p_served: np.ndarray,
    arm: np.ndarray,
    y: np.ndarray,
    days: np.ndarray,
) -> Result:
    """No shadow: each patient scored by its arm's model only; Brier by inverse-probability
    pseudo-outcomes (arms of 1/2)."""
    brier = (p_served - y) ** 2
    phi = brier * (arm / 0.5 - (~arm) / 0.5)
    mean, lower, upper = running_confidence_sequence(phi, alpha=config.channel_alpha, n_opt=config.cs_n_opt)
    n1, n0 = np.cumsum(arm), np.cumsum(~arm)
    e1, e0 = np.cumsum(y & arm), np.cumsum(y & ~arm)
    verdict = None
    for n in looks:
        i = n - 1
        evidence = Evidence(
            labelled=int(min(n0[i], n1[i])),
            events=int(min(e0[i], e1[i])),
            days=float(days[i]),
            brier=Bound(float(mean[i]), float(lower[i]), float(upper[i]), int(n)),
            paired=False,
        )
        verdict = evaluate(config, evidence)
        if verdict.outcome != "keep_testing":
            return Result(verdict.outcome, int(n), float(days[i]), verdict.rule)
    return Result("keep_testing", int(looks[-1]), float(days[looks[-1] - 1]), verdict.rule if verdict else "")


def chi_square_p(table: np.ndarray) -> np.ndarray:
    """Pearson chi-square p-values (1 df, no continuity correction) of 2x2 tables [..., 2, 2]:
    the statistic of scipy.stats.chi2_contingency(correction=False), vectorised; 1.0 where a
    margin is zero (chi2_contingency refuses those tables)."""
    a, b, c, d = table[..., 0, 0], table[..., 0, 1], table[..., 1, 0], table[..., 1, 1]
    total = a + b + c + d
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.where(margins > 0, total * (a * d - b * c) ** 2 / margins, 0.0)
    return np.where(margins > 0, stats.chi2.sf(chi2, 1), 1.0)


def naive(
    looks: np.ndarray, p_served: np.ndarray, arm: np.ndarray, y: np.ndarray, days: np.ndarray
) -> Result:
    correct = (p_served >= HIGH_RISK) == y
    idx = looks - 1
    c1, n1 = np.cumsum(correct & arm)[idx], np.cumsum(arm)[idx]
    c0, n0 = np.cumsum(correct & ~arm)[idx], np.cumsum(~arm)[idx]
    table = np.stack([np.stack([c1, n1 - c1], -1), np.stack([c0, n0 - c0], -1)], -2).astype(float)
    p = chi_square_p(table)
    hit = np.flatnonzero(p < NAIVE_P)
    if len(hit) == 0:
        return Result("keep_testing", int(looks[-1]), float(days[looks[-1] - 1]), "max_labels")
    j = hit[0]
    higher = c1[j] / n1[j] > c0[j] / n0[j]
    return Result("promote" if higher else "rollback", int(looks[j]), float(days[looks[j] - 1]), "chi_square")


def run_experiment(
    rng: np.random.Generator,
    scenarios: dict[str, Scenario],
    configs: dict[str, RuleConfig],
    max_labels: int,
    look_every: int,
    rate: float,
    label_share: float,
    methods: tuple[str, ...],
) -> dict[str, dict[str, Result]]:
    """One experiment: the same labelled patients (in label order), arrival times and arm
    assignment for every scenario and method."""
    patients = Patients.draw(rng, max_labels)
    arrivals = np.cumsum(rng.geometric(label_share, size=max_labels))  # arrivals needed per label
    days = MATURITY_DAYS + arrivals / rate
    arm = rng.random(max_labels) < 0.5  # True: challenger arm (the unpaired designs)
    looks = np.arange(look_every, max_labels + 1, look_every)
    if looks[-1] != max_labels:
        looks = np.r_[looks, max_labels]
    y = patients.y
    out: dict[str, dict[str, Result]] = {}
    for name, scenario in scenarios.items():
        p0, p1 = patients.probs(scenario.champion, scenario.challenger)
        served = np.where(arm, p1, p0)
        aurocs: dict[int, AurocLook] = {}
        results = {}
        for method in methods:
            if method == "engine_superiority_paired":
                results[method] = engine_paired(configs["superiority"], looks, p0, p1, y, days, aurocs)
            elif method == "engine_non_inferiority_paired":
                results[method] = engine_paired(configs["non_inferiority"], looks, p0, p1, y, days, aurocs)
            elif method == "naive_chi_square":
                results[method] = naive(looks, served, arm, y, days)
            elif method == "engine_superiority_unpaired":
                results[method] = engine_unpaired(configs["superiority"], looks, served, arm, y, days)
            else:
                raise ValueError(f"unknown method {method!r}")
        out[name] = results
    return out


# --------------------------------------------------------------------------- summary


def method_mode(method: str) -> str:
    return "non_inferiority" if "non_inferiority" in method else "superiority"


def definitions(scenario: str, mode: str, true_diff: float, margin: float) -> dict[str, Any]:
    """Which outcome is wrong / correct for this scenario under this mode."""
    wrong_promotion = (
        scenario in ("null", "worse_by_margin", "clearly_worse", "miscalibrated")
        if mode == "superiority"
        else scenario in ("worse_by_margin", "clearly_worse")
        or (scenario == "miscalibrated" and true_diff >= margin)
    )
    wrong_rollback = scenario in ("null", "better_auroc_0.03")
    if scenario == "better_auroc_0.03" or (scenario == "null" and mode == "non_inferiority"):
        power = "promote"
    elif scenario in ("clearly_worse", "miscalibrated") or (
        scenario == "worse_by_margin" and mode == "superiority"
    ):
        power = "rollback"
    elif scenario == "worse_by_margin":
        power = "not_promote"
    else:
        power = None
    return {"wrong_promotion": wrong_promotion, "wrong_rollback": wrong_rollback, "power": power}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def summarise(method: str, results: list[Result], scenario: str, true_diff: float, margin: float) -> dict:
    n = len(results)
    outcomes = [r.outcome for r in results]
    count = {o: outcomes.count(o) for o in ("promote", "rollback", "inconclusive", "keep_testing")}
    share = {o: round(c / n, 4) for o, c in count.items()}
    rules: dict[str, int] = {}
    for r in results:
        if r.outcome in ("promote", "rollback"):
            rules[f"{r.outcome}:{r.rule}"] = rules.get(f"{r.outcome}:{r.rule}", 0) + 1
    decided = [r for r in results if r.outcome in ("promote", "rollback")]
    which = definitions(scenario, method_mode(method), true_diff, margin)
    power_k = {
        "promote": count["promote"],
        "rollback": count["rollback"],
        "not_promote": n - count["promote"],
    }
    counts = {
        "wrong_promotion": count["promote"] if which["wrong_promotion"] else None,
        "wrong_rollback": count["rollback"] if which["wrong_rollback"] else None,
        "power": power_k[which["power"]] if which["power"] else None,
    }
    return {
        "method": method,
        "wrong_promotion": round(counts["wrong_promotion"] / n, 4)
        if counts["wrong_promotion"] is not None
        else None,
        "wrong_rollback": round(counts["wrong_rollback"] / n, 4)
        if counts["wrong_rollback"] is not None
        else None,
        "power": round(counts["power"] / n, 4) if counts["power"] is not None else None,
        "power_means": which["power"],
        "median_n": float(np.median([r.n for r in decided])) if decided else None,
        "median_days": round(float(np.median([r.days for r in decided])), 1) if decided else None,
        **share,
        "counts": count,
        "decided_by": dict(sorted(rules.items())),
        "ci95": {k: wilson(v, n) for k, v in counts.items() if v is not None},
        "experiments": n,
    }


def simulate(
    experiments: int = 1000,
    seed: int = 0,
    max_labels: int = 5000,
    look_every: int = 50,
    rate: float = 50.0,
    label_share: float = 0.8,
    scenario_names: tuple[str, ...] = SCENARIOS,
    methods: tuple[str, ...] = METHODS,
    reference_n: int = 100_000,
    truth_n: int = 1_000_000,
) -> dict[str, Any]:
    started = time.perf_counter()
    margin = RuleConfig().margin
    configs = {m: RuleConfig(mode=m, max_labels=max_labels) for m in ("superiority", "non_inferiority")}
    scenarios = build_scenarios(seed, margin, reference_n, truth_n, scenario_names)
    setup_s = time.perf_counter() - started
    children = np.random.SeedSequence(seed).spawn(experiments)
    raw: dict[str, dict[str, list[Result]]] = {s: {m: [] for m in methods} for s in scenarios}
    for child in children:
        one = run_experiment(
            np.random.default_rng(child),
            scenarios,
            configs,
            max_labels,
            look_every,
            rate,
            label_share,
            methods,
        )
        for s, by_method in one.items():
            for m, r in by_method.items():
                raw[s][m].append(r)
    report_scenarios = {}
    for name, scenario in scenarios.items():
        true_diff = scenario.facts["true_brier_diff"]
        report_scenarios[name] = {
            **scenario.facts,
            "methods": [summarise(m, raw[name][m], name, true_diff, margin) for m in methods],
        }
    report = {
        "design": {
            "experiments": experiments,
            "seed": seed,
            "max_labels": max_labels,
            "look_every": look_every,
            "looks": int(math.ceil(max_labels / look_every)),
            "arrivals_per_day": rate,
            "label_share": label_share,
            "maturity_days": MATURITY_DAYS,
            "reference_n": reference_n,
            "truth_n": truth_n,
            "rule": {m: c.model_dump(mode="json") for m, c in configs.items()},
            "rule_digest": {m: c.digest() for m, c in configs.items()},
            "naive": {"high_risk_threshold": HIGH_RISK, "p": NAIVE_P},
        },
        "scenarios": report_scenarios,
        "targets": targets(report_scenarios),
        "seconds": {"setup": round(setup_s, 1), "total": round(time.perf_counter() - started, 1)},
    }
    naive_null = method_row(report_scenarios, "null", "naive_chi_square")
    if naive_null:
        report["naive_inflation"] = {
            "null_wrong_promotion": naive_null["wrong_promotion"],
            "null_wrong_rollback": naive_null["wrong_rollback"],
            "null_any_decision": round(naive_null["promote"] + naive_null["rollback"], 4),
            "nominal_single_look": NAIVE_P,
        }
    return report


def method_row(scenarios: dict[str, Any], scenario: str, method: str) -> dict[str, Any] | None:
    for row in scenarios.get(scenario, {}).get("methods", []):
        if row["method"] == method:
            return row
    return None


def targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, facts in scenarios.items():
        for row in facts["methods"]:
            if row["method"] in ENGINE_METHODS and row["wrong_promotion"] is not None:
                out.append(
                    {
                        "target": f"wrong_promotion <= {WRONG_PROMOTION_LIMIT}",
                        "scenario": name,
                        "method": row["method"],
                        "value": row["wrong_promotion"],
                        "ci95": row["ci95"]["wrong_promotion"],
                        "passed": row["wrong_promotion"] <= WRONG_PROMOTION_LIMIT,
                    }
                )
    row = method_row(scenarios, "better_auroc_0.03", "engine_superiority_paired")
    if row is not None:
        out.append(
            {
                "target": f"power >= {POWER_TARGET}",
                "scenario": "better_auroc_0.03",
                "method": "engine_superiority_paired",
                "value": row["power"],
                "ci95": row["ci95"]["power"],
                "passed": row["power"] >= POWER_TARGET,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    parser.add_argument("--experiments", type=int, default=1000, help="Experiments per scenario.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-labels", type=int, default=5000)
    parser.add_argument("--look-every", type=int, default=50, help="Labelled patients between looks.")
    parser.add_argument("--rate", type=float, default=50.0, help="Arrivals per day.")
    parser.add_argument("--label-share", type=float, default=0.8, help="Share of outcomes recorded.")
    args = parser.parse_args()
    report = simulate(
        args.experiments, args.seed, args.max_labels, args.look_every, args.rate, args.label_share
    )
    emit(report, args.json)
    for t in report["targets"]:
        status = "PASS" if t["passed"] else "FAIL"
        print(f"{status} {t['target']}: {t['method']} / {t['scenario']} = {t['value']} (95% CI {t['ci95']})")


if __name__ == "__main__":
    main()
