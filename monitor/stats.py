"""The statistics behind the decisions: short formulas on numpy arrays, with references.

- `delong`: DeLong, DeLong & Clarke-Pearson (1988) paired AUROC comparison, in the fast
  midrank form of Sun & Xu (2014). The two models score the same patients (the served variant
  and its shadow), so the covariance of the two AUROCs enters the standard error.
- `confidence_sequence`: the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha,
  Kennedy & Ramdas (2021, "Time-uniform central limit theory and asymptotic confidence
  sequences"), Gaussian-mixture boundary, as GrowthBook uses it. It stays valid however often
  it is looked at: P(the true mean leaves the sequence at any time) <= alpha, asymptotically.
- `spending_boundaries`: group-sequential boundaries for planned looks with the Lan-DeMets
  O'Brien-Fleming-type spending function alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), found
  by recursive numerical integration (Armitage, McPherson & Rowe 1969; Jennison & Turnbull
  2000, ch. 19). Only the looks actually taken spend alpha, at their actual information times.
- `srm_test`: the sample-ratio-mismatch check (chi-square goodness of fit of the observed
  split against the configured weights), the one proper use of chi-square here.

Everything returns plain floats, so the simulation (bench/decisions.py) and the decision engine
call the very same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# --------------------------------------------------------------------------- DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (vectorised)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


@dataclass(frozen=True)
class DeLong:
    """AUROCs of two models on the same patients, their difference (b - a) and its test."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    var_a: float
    var_b: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        half = stats.norm.ppf(0.5 + level / 2) * self.se
        return self.diff - half, self.diff + half


def auroc_components(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's structural components (V10 over positives, V01 over negatives)."""
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[y], scores[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("AUROC needs at least one positive and one negative outcome")
    r_all = _midranks(np.r_[pos, neg])
    r_pos, r_neg = _midranks(pos), _midranks(neg)
    auc = (r_all[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (r_all[:m] - r_pos) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (r_all[m:] - r_neg) / m  # per negative: share of positives that outrank it
    return float(auc), v10, v01


def delong(scores_a: np.ndarray, scores_b: np.ndarray, y: np.ndarray) -> DeLong:
    """Paired DeLong test of AUROC(b) - AUROC(a) on the same patients."""
    y = np.asarray(y, dtype=bool)
    auc_a, v10_a, v01_a = auroc_components(scores_a, y)
    auc_b, v10_b, v01_b = auroc_components(scores_b, y)
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.vstack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    diff = auc_b - auc_a
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return DeLong(auc_a, auc_b, diff, se, z, float(cov[0, 0]), float(cov[1, 1]))


def auroc_se(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """One model's AUROC and its DeLong standard error."""
    auc, v10, v01 = auroc_components(scores, y)
    m, n = len(v10), len(v01)
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    return auc, math.sqrt(var)


# --------------------------------------------------------------------------- confidence sequence


def cs_rho2(n_opt: float, alpha: float) -> float:
    """The mixture parameter that makes the sequence tightest near n_opt (Waudby-Smith et al.,
    the closed-form approximation GrowthBook uses)."""
    la = -2.0 * math.log(alpha)
    return (la + math.log(la + 1.0)) / n_opt


def cs_halfwidth(n: int | np.ndarray, sd: float | np.ndarray, alpha: float, n_opt: float) -> np.ndarray:
    """Half-width of the two-sided asymptotic confidence sequence for a mean after n values."""
    n = np.asarray(n, dtype=float)
    rho2 = cs_rho2(n_opt, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.sqrt(2.0 * (n * rho2 + 1.0) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1.0) / alpha))
    return np.asarray(sd) * margin


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float
    n: int
    sd: float


def confidence_sequence(values: np.ndarray, alpha: float, n_opt: float) -> Interval:
    """The always-valid interval for the mean of `values` (one per patient, in arrival order).

    Two-sided at level alpha, so each one-sided bound errs with probability at most alpha: the
    decision rule uses alpha = its one-sided error, a conservative choice.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return Interval(float(values.mean()) if n else 0.0, -math.inf, math.inf, n, math.nan)
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    half = float(cs_halfwidth(n, sd, alpha, n_opt))
    return Interval(mean, mean - half, mean + half, n, sd)


def running_confidence_sequence(
    values: np.ndarray, alpha: float, n_opt: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lower and upper bound after each of 1..n values (for the simulation's many looks)."""
    values = np.asarray(values, dtype=float)
    n = np.arange(1, len(values) + 1, dtype=float)
    csum, csq = np.cumsum(values), np.cumsum(values**2)
    mean = csum / n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(n > 1, (csq - n * mean**2) / (n - 1), np.nan)
    half = cs_halfwidth(n, np.sqrt(np.clip(var, 0, None)), alpha, n_opt)
    half = np.where(n > 1, half, np.inf)
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------- alpha spending


def obf_spending(t: float | np.ndarray, alpha: float) -> np.ndarray:
    """Lan-DeMets O'Brien-Fleming-type spending: alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt t)."""
    t = np.clip(np.asarray(t, dtype=float), 1e-12, 1.0)
    return 2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / np.sqrt(t))


def spending_boundaries(times: Sequence[float], alpha: float, grid: int = 1200) -> list[float]:
    """One-sided z boundaries c_k for looks at information times 0 < t_1 < ... <= 1 such that
    P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = alpha(t_k) - alpha(t_{k-1}) under H0.

    Works on the score scale S_k = Z_k sqrt(t_k) (independent N(0, t_k - t_{k-1}) increments):
    the density of S_k on the continuation region is carried from look to look on a grid.
    """
    times = [float(t) for t in times]
    if not times or any(b <= a for a, b in zip(times, times[1:], strict=False)) or times[0] <= 0:
        raise ValueError("information times must be increasing and positive")
    times = [min(t, 1.0) for t in times]
    spent = obf_spending(np.array(times), alpha)
    bounds: list[float] = []
    lo = -10.0 * math.sqrt(times[-1])
    s = density = None
    previous_spent, previous_t = 0.0, 0.0
    for k, t in enumerate(times):
        target = float(spent[k]) - previous_spent
        dt = t - previous_t
        if k == 0:
            bound = float(stats.norm.isf(target)) if target > 0 else math.inf
        elif target <= 0:
            bound = math.inf
        else:

            def crossing(c: float, s=s, density=density, dt=dt, t=t, target=target) -> float:
                tail = stats.norm.sf((c * math.sqrt(t) - s) / math.sqrt(dt))
                return float(np.trapezoid(density * tail, s)) - target

            bound = float(_brentq(crossing, -5.0, 40.0))
        bounds.append(bound)
        # Density of S_k on the continuation region S_k < bound * sqrt(t).
        top = min(bound, 12.0) * math.sqrt(t)
        new_s = np.linspace(lo, top, grid)
        if k == 0:
            new_density = stats.norm.pdf(new_s / math.sqrt(t)) / math.sqrt(t)
        else:
            kernel = stats.norm.pdf((new_s[:, None] - s[None, :]) / math.sqrt(dt)) / math.sqrt(dt)
            new_density = np.trapezoid(kernel * density[None, :], s, axis=1)
        s, density = new_s, new_density
        previous_spent, previous_t = float(spent[k]), t
    return bounds


def _brentq(f, a: float, b: float) -> float:
    from scipy.optimize import brentq

    return brentq(f, a, b, xtol=1e-6)


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class SampleRatio:
    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float


def srm_test(observed: dict[str, int], weights: dict[str, float]) -> SampleRatio:
    """Chi-square goodness of fit of the observed split against the configured weights.

    A tiny p (the rule's gate: p < 0.001) means assignment or logging is broken, so no
    comparison between the arms can be trusted."""
    names = sorted(n for n, w in weights.items() if w > 0)
    total_w = sum(weights[n] for n in names)
    counts = np.array([observed.get(n, 0) for n in names], dtype=float)
    share = {n: weights[n] / total_w for n in names}
    if len(names) < 2 or counts.sum() == 0:
        return SampleRatio({n: int(observed.get(n, 0)) for n in names}, share, 0.0, 1.0)
    expected = counts.sum() * np.array([share[n] for n in names])
    chi2, p = stats.chisquare(counts, expected)
    return SampleRatio({n: int(c) for n, c in zip(names, counts, strict=True)}, share, float(chi2), float(p))
