"""Synthetic MIMIC-style EHR: patients, stays, diagnoses, labs, vitals and discharge notes.

Generation runs as Ray tasks over fixed blocks of patients, each with its own seed derived
from (seed, block), so the output depends only on the seed and the patient count, never on
the cluster, and memory stays bounded by one block per worker.

The generative model (documented in data/README.md) makes the 30-day readmission depend on:

- structured facts the feature pipeline can see: age, comorbidities (coded in ICD-10 for only
  ~70% of stays, as in real claims), prior admissions in the last year, severity (through
  LOS, labs and vitals at discharge) and discharge disposition;
- facts written only in the discharge note: living alone, cost barriers to medications,
  symptoms still present at discharge (chest pain, shortness of breath, ...), follow-up.

Distractors carry no risk: symptoms the patient *denies*, conditions documented as *absent*
("no history of heart failure") and *family* history ("mother had CHF") use the same words as
the risky facts, so only a reader that understands negation and experiencer gets them right.

Each stay's outcome is drawn from that model and then realised as an admission time: a
readmitted stay is followed by another admission 1-30 days after discharge, any other stay
by either nothing or an admission more than 30 days later. The feature pipeline derives the
label from admission times alone, exactly as it does for real data.

Shifts (`SHIFTS`) make realistic scenario data for drift monitoring: a different population
(`older_hf`, through the same age and condition model, so labs, codes, notes and risk follow)
or a change in how the same patients are recorded (`creatinine_umol`, `note_template`,
`missing_lab_feed`: these draw the same random numbers as the unshifted generator, so only
the recording differs from the unshifted data of the same seed).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.notes import PRIMARY_PROBLEMS, NoteFacts, render_discharge_summary
from data.raw import to_raw_table, write_part, write_raw_manifest
from data.schema import DISCHARGE_SUMMARY, LAB_RANGES, VITAL_RANGES
from data.storage import Location, resolve, staged_output

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
BLOCK_PATIENTS = 4000
MAX_ADMISSIONS = 40
STUDY_START = np.datetime64("2015-01-01T00:00:00", "s")
STUDY_DAYS = 6 * 365
DAY = 86_400

# Chronic conditions: prevalence at age 65 and the odds multiplier per decade of age.
CONDITIONS: dict[str, tuple[float, float]] = {
    "chf": (0.14, 1.5),
    "copd": (0.14, 1.2),
    "diabetes": (0.27, 1.1),
    "ckd": (0.15, 1.4),
    "htn": (0.55, 1.3),
    "afib": (0.13, 1.6),
    "cad": (0.20, 1.4),
    "cancer": (0.08, 1.3),
    "dementia": (0.05, 2.2),
    "liver_disease": (0.04, 1.0),
    "stroke": (0.07, 1.5),
    "depression": (0.15, 0.9),
}
COND = {name: i for i, name in enumerate(CONDITIONS)}

# ICD-10 codes used when a condition is coded on a stay (without dots).
CONDITION_ICD10: dict[str, tuple[str, ...]] = {
    "chf": ("I509", "I5022", "I5032", "I110"),
    "copd": ("J449", "J441"),
    "diabetes": ("E119", "E1165", "E1122", "E1140"),
    "ckd": ("N183", "N184", "N189"),
    "htn": ("I10",),
    "afib": ("I4891", "I480"),
    "cad": ("I2510", "I252"),
    "cancer": ("C3490", "C189", "C50919", "C61", "C787"),
    "dementia": ("F0390", "G309"),
    "liver_disease": ("K7030", "K7460", "K7290"),
    "stroke": ("I639", "Z8673"),
    "depression": ("F329", "F331"),
}
CODING_COMPLETENESS = 0.7
NOISE_ICD10 = ("E785", "K219", "Z7901", "M1990", "E039", "G4733", "Z87891", "F17210", "R739")

# Primary problem -> (ICD-10 code, condition that makes it likelier, severity shift).
PROBLEM_INFO: dict[str, tuple[str, str | None, float]] = {
    "CHF exacerbation": ("I5023", "chf", 0.3),
    "community-acquired pneumonia": ("J189", None, 0.2),
    "COPD exacerbation": ("J441", "copd", 0.2),
    "sepsis from UTI": ("A419", None, 0.8),
    "upper GI bleed": ("K922", "liver_disease", 0.4),
    "acute kidney injury": ("N179", "ckd", 0.3),
    "cellulitis": ("L03115", None, -0.3),
    "syncope": ("R55", None, -0.4),
    "NSTEMI": ("I214", "cad", 0.4),
    "DKA": ("E1110", "diabetes", 0.3),
    "hip fracture after fall": ("S72001A", "dementia", 0.2),
    "atrial fibrillation with RVR": ("I4891", "afib", 0.0),
}

SYMPTOM_BASE: dict[str, float] = {
    "chest_pain": 0.08,
    "shortness_of_breath": 0.10,
    "dizziness": 0.07,
    "palpitations": 0.05,
    "leg_swelling": 0.07,
    "fever": 0.03,
    "confusion": 0.04,
}
DISPOSITIONS = ("HOME", "HOME_HEALTH", "SNF", "REHAB", "AMA", "HOSPICE", "DIED")
ADMISSION_TYPES = ("EMERGENCY", "URGENT", "ELECTIVE")
ETHNICITIES = ("WHITE", "BLACK", "HISPANIC", "ASIAN", "OTHER", "UNKNOWN")
RELATIVES = ("mother", "father", "brother", "sister", "son", "daughter")
MEDICATIONS: dict[str, tuple[str, ...]] = {
    "chf": ("furosemide", "carvedilol", "spironolactone"),
    "copd": ("tiotropium", "albuterol"),
    "diabetes": ("metformin", "insulin glargine"),
    "ckd": ("sevelamer",),
    "htn": ("amlodipine", "lisinopril"),
    "afib": ("apixaban", "metoprolol"),
    "cad": ("aspirin", "atorvastatin"),
    "cancer": ("ondansetron",),
    "dementia": ("donepezil",),
    "liver_disease": ("lactulose", "rifaximin"),
    "stroke": ("clopidogrel",),
    "depression": ("sertraline",),
}

# Readmission model: logit = INTERCEPT + sum of the terms below (see module docstring).
INTERCEPT = -4.3
W_AGE_PER_YEAR = 0.015
W_CONDITION = {
    "chf": 0.35, "copd": 0.30, "diabetes": 0.15, "ckd": 0.30, "cancer": 0.40,
    "dementia": 0.25, "liver_disease": 0.30, "afib": 0.10, "cad": 0.10,
}  # fmt: skip
W_PRIOR_ADMISSIONS = 0.30  # per admission in the previous 365 days, at most 3
W_SEVERITY = 0.30
W_LOS_PER_DAY = 0.02  # at most 30 days
W_DISPOSITION = {"HOME": 0.0, "HOME_HEALTH": 0.2, "SNF": 0.35, "REHAB": 0.1, "AMA": 0.9}
W_LOW_ALBUMIN = 0.5  # albumin < 3.0 g/dL at discharge
W_HIGH_CREATININE = 0.4  # creatinine > 2.0 mg/dL
W_LOW_HEMOGLOBIN = 0.35  # hemoglobin < 9 g/dL
W_LOW_SODIUM = 0.3  # sodium < 133 mmol/L
W_TACHYCARDIA = 0.3  # heart rate > 100 at discharge
# Note-only facts.
W_LIVES_ALONE = 0.8
W_COST_BARRIER = 0.9
W_SYMPTOM_PRESENT = {"chest_pain": 0.8, "shortness_of_breath": 0.8}
W_OTHER_SYMPTOM = 0.4  # per other symptom present at discharge, at most 2
W_FOLLOWUP = -0.4

# --- Shifted scenarios -------------------------------------------------------------------------
# Names are an interface: the drift monitor's benchmark and tests iterate them.
SHIFTS: dict[str, str] = {
    "older_hf": "Older population (age +9 years) with more heart failure (CHF prevalence at 65: 14% -> 20%).",
    "creatinine_umol": "The lab reports creatinine in umol/L (values x88.4, unit umol/L) instead of mg/dL.",
    "note_template": "New discharge-note template: other headers and order, abbreviations (SOB, c/o, h/o).",
    "missing_lab_feed": "The albumin and BNP feed stops: no rows for either, so their features are unknown.",
}
# Per shift, the feature columns (names in the feature manifest) a drift monitor should flag:
# those whose distribution or missing rate moves clearly (KS > 0.1 or +25 points missing,
# measured on 2,000 patients of seed 21 against the unshifted data).
SHIFT_COLUMNS: dict[str, tuple[str, ...]] = {
    "older_hf": (
        "age", "cci_congestive_heart_failure", "charlson_index", "n_diagnoses",
        "bnp_last", "bnp_min", "bnp_max", "bnp_mean", "note_chf", "note_n_conditions",
    ),
    "creatinine_umol": ("creatinine_last", "creatinine_min", "creatinine_max", "creatinine_mean"),
    # The main signal here is in note descriptors (length, negation-cue rate), which the monitor
    # defines. Of the concept columns these move: the extractor does not read "lives w/" or
    # "f/u arranged" (unknown instead of 0/1) nor "neg for" / "w/o" as negations (more symptoms).
    "note_template": ("note_lives_alone", "note_followup_arranged", "note_n_symptoms"),
    "missing_lab_feed": (
        "albumin_last", "albumin_min", "albumin_max", "albumin_mean", "albumin_count",
        "bnp_last", "bnp_min", "bnp_max", "bnp_mean", "bnp_count",
    ),
}  # fmt: skip
OLDER_HF_AGE_SHIFT = 9.0  # years added to the mean age at first admission
OLDER_HF_CHF_PREVALENCE = 0.20  # CHF prevalence at age 65 (CONDITIONS has 0.14)
CREATININE_UMOL_PER_MG_DL = 88.4
MISSING_LAB_FEED = ("albumin", "bnp")


@dataclass(frozen=True)
class _Scenario:
    """What the selected shifts change; the default instance is the unshifted generator."""

    age_mean: float = 64.0
    prevalence: tuple[tuple[str, float], ...] = ()  # condition -> prevalence at 65
    creatinine_umol: bool = False
    dropped_labs: tuple[str, ...] = ()
    note_template: str = "standard"

    @classmethod
    def of(cls, shifts: tuple[str, ...]) -> _Scenario:
        older = "older_hf" in shifts
        return cls(
            age_mean=64.0 + (OLDER_HF_AGE_SHIFT if older else 0.0),
            prevalence=(("chf", OLDER_HF_CHF_PREVALENCE),) if older else (),
            creatinine_umol="creatinine_umol" in shifts,
            dropped_labs=MISSING_LAB_FEED if "missing_lab_feed" in shifts else (),
            note_template="abbreviated" if "note_template" in shifts else "standard",
        )


def parse_shifts(shift: str | Iterable[str] | None) -> tuple[str, ...]:
    """Shift names in `SHIFTS` order, without repeats; a string may hold several, comma-separated.

    Raises ValueError naming the valid shifts, so a typo never silently makes unshifted data.
    """
    if shift is None:
        return ()
    given = [shift] if isinstance(shift, str) else list(shift)
    names = {part.strip() for item in given for part in str(item).split(",") if part.strip()}
    unknown = sorted(names - set(SHIFTS))
    if unknown:
        raise ValueError(f"unknown shift {', '.join(unknown)}; valid shifts: {', '.join(SHIFTS)}")
    return tuple(name for name in SHIFTS if name in names)


@dataclass
class _Patients:
    ids: np.ndarray
    sex: np.ndarray
    age0: np.ndarray
    first_admit: np.ndarray  # days since STUDY_START
    ethnicity: np.ndarray
    insurance: np.ndarray
    conditions: np.ndarray  # (n, len(CONDITIONS)) bool
    frailty: np.ndarray
    lives_alone: np.ndarray
    cost_barrier: np.ndarray


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Index of one category per row from a (rows, categories) matrix of weights."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)


def _make_patients(rng: np.random.Generator, first: int, n: int, scenario: _Scenario) -> _Patients:
    age0 = np.clip(rng.normal(scenario.age_mean, 16, n), 18, 99)
    decades = (age0 - 65) / 10
    frailty = rng.normal(0, 1, n) + 0.3 * np.maximum(decades, 0)
    conditions = np.zeros((n, len(CONDITIONS)), dtype=bool)
    prevalence = dict(scenario.prevalence)
    for j, (name, (prev, per_decade)) in enumerate(CONDITIONS.items()):
        prev = prevalence.get(name, prev)
        logit = math.log(prev / (1 - prev)) + math.log(per_decade) * decades + 0.3 * frailty
        conditions[:, j] = rng.random(n) < _sigmoid(logit)
    medicare = (age0 >= 65) | (rng.random(n) < 0.05)
    insurance = np.where(medicare, "Medicare", np.where(rng.random(n) < 0.3, "Medicaid", "Private")).astype(
        object
    )
    insurance[(~medicare) & (rng.random(n) < 0.05)] = "Self Pay"
    cost_p = np.where(np.isin(insurance, ["Medicaid", "Self Pay"]), 0.2, 0.07)
    return _Patients(
        ids=np.array([f"P{first + i:08d}" for i in range(n)], dtype=object),
        sex=np.where(rng.random(n) < 0.52, "F", "M").astype(object),
        age0=age0,
        first_admit=rng.random(n) * (STUDY_DAYS - 60),
        ethnicity=np.asarray(ETHNICITIES, dtype=object)[
            _pick(rng, np.tile([0.62, 0.14, 0.10, 0.05, 0.05, 0.04], (n, 1)))
        ],
        insurance=insurance,
        conditions=conditions,
        frailty=frailty,
        lives_alone=rng.random(n) < _sigmoid(-1.3 + 0.25 * np.maximum(decades, 0)),
        cost_barrier=rng.random(n) < cost_p,
    )


def _discharge_labs(
    rng: np.random.Generator,
    cond: np.ndarray,
    problem: np.ndarray,
    severity: np.ndarray,
    frailty: np.ndarray,
    female: np.ndarray,
) -> dict[str, np.ndarray]:
    """Latent lab values at discharge per stay, driven by conditions and severity."""
    m = len(severity)

    def has(name: str) -> np.ndarray:
        return cond[:, COND[name]]

    def prob(name: str) -> np.ndarray:
        return problem == PRIMARY_PROBLEMS.index(name)

    creat = np.exp(
        rng.normal(np.log(0.9), 0.25, m)
        + 0.7 * has("ckd")
        + 0.55 * prob("acute kidney injury")
        + 0.15 * severity
    )
    values = {
        "creatinine": creat,
        "bun": 15 * creat**0.8 * np.exp(rng.normal(0, 0.2, m)),
        "sodium": rng.normal(139, 3, m) - 3 * has("chf") - 2 * (severity > 1),
        "potassium": rng.normal(4.2, 0.4, m) + 0.4 * has("ckd"),
        "glucose": rng.normal(110, 20, m) + 60 * has("diabetes") + 150 * prob("DKA"),
        "hemoglobin": rng.normal(13.2, 1.5, m)
        - 1.0 * female
        - 1.5 * has("ckd")
        - 3.0 * prob("upper GI bleed")
        - 0.5 * severity,
        "wbc": np.exp(
            rng.normal(np.log(8), 0.25, m)
            + 0.45 * prob("sepsis from UTI")
            + 0.35 * prob("community-acquired pneumonia")
        ),
        "albumin": rng.normal(3.7, 0.4, m) - 0.3 * severity - 0.2 * frailty - 0.4 * has("liver_disease"),
        "bnp": np.exp(rng.normal(np.log(80), 0.6, m) + 2.2 * has("chf") + 0.6 * prob("CHF exacerbation")),
        "lactate": np.exp(rng.normal(np.log(1.2), 0.3, m) + 0.5 * prob("sepsis from UTI")),
    }
    return {k: np.clip(v, LAB_RANGES[k].low, LAB_RANGES[k].high) for k, v in values.items()}


def _discharge_vitals(
    rng: np.random.Generator, cond: np.ndarray, problem: np.ndarray, severity: np.ndarray
) -> dict[str, np.ndarray]:
    m = len(severity)
    afib_rvr = problem == PRIMARY_PROBLEMS.index("atrial fibrillation with RVR")
    copd = cond[:, COND["copd"]]
    values = {
        "heart_rate": rng.normal(80, 11, m) + 7 * severity + 10 * afib_rvr,
        "sbp": rng.normal(128, 17, m) + 8 * cond[:, COND["htn"]],
        "dbp": rng.normal(72, 10, m),
        "resp_rate": rng.normal(17, 2.2, m) + 2 * copd + 1.0 * severity,
        "temperature": rng.normal(36.8, 0.35, m),
        "spo2": rng.normal(96.5, 1.8, m) - 2.5 * copd,
    }
    return {k: np.clip(v, VITAL_RANGES[k].low, VITAL_RANGES[k].high) for k, v in values.items()}


# Which labs are drawn on which stays: probability of at least one measurement.
LAB_MEASURED_P = {
    "creatinine": 0.97, "bun": 0.95, "sodium": 0.97, "potassium": 0.96, "glucose": 0.93,
    "hemoglobin": 0.95, "wbc": 0.94, "albumin": 0.55, "bnp": 0.25, "lactate": 0.2,
}  # fmt: skip


def _measurements(
    rng: np.random.Generator,
    stay_idx: np.ndarray,
    admit: np.ndarray,
    discharge: np.ndarray,
    final: dict[str, np.ndarray],
    measured_p: dict[str, float],
    spread: dict[str, float],
    max_count: int,
) -> dict[str, np.ndarray]:
    """Long-format measurements ending at each stay's latent discharge value.

    Earlier measurements drift away from the discharge value (patients improve), so the
    last value differs from the mean and min/max, as in real charts.
    """
    los = discharge - admit
    rows_stay, rows_item, rows_time, rows_value = [], [], [], []
    for item, final_values in final.items():
        take = rng.random(len(stay_idx)) < measured_p.get(item, 1.0)
        idx = np.flatnonzero(take)
        counts = np.minimum(1 + rng.poisson(0.3 + 0.15 * los[idx]), max_count)
        rep = np.repeat(idx, counts)
        # Position of each measurement within its stay: 0 = first, 1 = last.
        per_row = np.repeat(counts, counts)
        frac = np.where(per_row > 1, _rank_within(rep) / np.maximum(per_row - 1, 1), 1.0)
        drift = spread[item] * (1 - frac) * rng.normal(1.0, 0.5, len(rep))
        value = final_values[rep] + drift + rng.normal(0, 0.1 * abs(spread[item]), len(rep))
        value = np.where(frac == 1.0, final_values[rep], value)
        rows_stay.append(rep)
        rows_item.append(np.full(len(rep), item, dtype=object))
        rows_time.append(admit[rep] + frac * los[rep] * 0.95)
        rows_value.append(value)
    return {
        "stay": np.concatenate(rows_stay),
        "item": np.concatenate(rows_item),
        "time": np.concatenate(rows_time),
        "value": np.concatenate(rows_value),
    }


LAB_SPREAD = {
    "creatinine": 0.4, "bun": 8.0, "sodium": -3.0, "potassium": 0.3, "glucose": 40.0,
    "hemoglobin": -0.8, "wbc": 3.0, "albumin": -0.2, "bnp": 300.0, "lactate": 0.8,
}  # fmt: skip
VITAL_SPREAD = {
    "heart_rate": 12.0, "sbp": 10.0, "dbp": 5.0, "resp_rate": 3.0, "temperature": 0.6, "spo2": -2.0,
}  # fmt: skip


def _clip_items(values: np.ndarray, items: np.ndarray, ranges: dict) -> np.ndarray:
    out = values.copy()
    for item, r in ranges.items():
        sel = items == item
        out[sel] = np.clip(out[sel], r.low, r.high)
    return out


def _rank_within(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    positions = np.arange(len(sorted_groups))
    return positions - np.maximum.accumulate(np.where(starts, positions, 0))


def _to_timestamp(days: np.ndarray) -> np.ndarray:
    return STUDY_START + (np.asarray(days) * DAY).astype("timedelta64[s]")


def generate_block(
    seed: int,
    block: int,
    n_patients: int,
    with_latents: bool = False,
    shift: str | Iterable[str] | None = None,
) -> dict[str, pa.Table]:
    """All tables for one block of patients; depends only on (seed, block, n_patients, shift)."""
    scenario = _Scenario.of(parse_shifts(shift))
    rng = np.random.default_rng([seed, block])
    first = block * BLOCK_PATIENTS
    pts = _make_patients(rng, first, n_patients, scenario)
    n = n_patients

    stays: dict[str, list[np.ndarray]] = {k: [] for k in (
        "patient", "admit", "discharge", "type", "via_ed", "disposition", "problem", "severity",
        "readmit", "prior365", "symptoms", "denied", "followup",
    )}  # fmt: skip
    lab_final: list[dict[str, np.ndarray]] = []
    vital_final: list[dict[str, np.ndarray]] = []
    admit_history = np.full((n, MAX_ADMISSIONS), np.nan)
    next_admit = pts.first_admit.copy()
    active = np.ones(n, dtype=bool)
    symptom_names = list(SYMPTOM_BASE)
    other_symptoms = [i for i, name in enumerate(symptom_names) if name not in W_SYMPTOM_PRESENT]

    for k in range(MAX_ADMISSIONS):
        who = np.flatnonzero(active)
        if len(who) == 0:
            break
        m = len(who)
        admit = next_admit[who] + rng.random(m) * 0.5
        admit_history[who, k] = admit
        prior365 = np.sum((admit[:, None] - admit_history[who, :k]) <= 365, axis=1)
        cond = pts.conditions[who]
        age = pts.age0[who] + (admit - pts.first_admit[who]) / 365.25
        weights = np.ones((m, len(PRIMARY_PROBLEMS)))
        for j, name in enumerate(PRIMARY_PROBLEMS):
            linked = PROBLEM_INFO[name][1]
            if linked:
                weights[:, j] = np.where(cond[:, COND[linked]], 4.0, 0.25)
        problem = _pick(rng, weights)
        shift = np.array([PROBLEM_INFO[p][2] for p in PRIMARY_PROBLEMS])[problem]
        severity = rng.normal(0, 1, m) + 0.3 * pts.frailty[who] + shift + 0.15 * prior365
        los = np.clip(np.exp(rng.normal(np.log(3.5) + 0.25 * severity, 0.5)), 0.3, 60)
        adm_type = _pick(rng, np.tile([0.72, 0.1, 0.18], (m, 1)))
        via_ed = (adm_type == 0) & (rng.random(m) < 0.92)
        disp_logits = np.column_stack([
            np.zeros(m),
            -1.6 + 0.3 * (age - 65) / 10 + 0.2 * severity,
            -2.3 + 0.6 * (age - 65) / 10 + 0.4 * severity + 0.3 * pts.frailty[who],
            -3.0 + 0.3 * severity,
            -3.4 + 0.5 * pts.cost_barrier[who] - 0.2 * (age - 65) / 10,
            -5.2 + 0.6 * severity + 1.2 * cond[:, COND["cancer"]],
            -5.0 + 0.8 * severity + 0.3 * (age - 65) / 10,
        ])  # fmt: skip
        disposition = _pick(rng, np.exp(disp_logits))
        p_sym = np.column_stack(
            [np.full(m, base) + 0.05 * np.clip(severity, 0, None) for base in SYMPTOM_BASE.values()]
        )
        p_sym[:, symptom_names.index("shortness_of_breath")] += 0.12 * (
            cond[:, COND["chf"]] | cond[:, COND["copd"]]
        )
        p_sym[:, symptom_names.index("chest_pain")] += 0.08 * cond[:, COND["cad"]]
        symptoms = rng.random((m, len(symptom_names))) < p_sym
        denied = (~symptoms) & (rng.random((m, len(symptom_names))) < 0.45)
        followup = rng.random(m) < np.clip(
            0.82 - 0.4 * (disposition == 4) - 0.15 * pts.cost_barrier[who], 0, 1
        )
        labs = _discharge_labs(rng, cond, problem, severity, pts.frailty[who], pts.sex[who] == "F")
        vitals = _discharge_vitals(rng, cond, problem, severity)

        logit = (
            INTERCEPT
            + W_AGE_PER_YEAR * (age - 65)
            + sum(w * cond[:, COND[c]] for c, w in W_CONDITION.items())
            + W_PRIOR_ADMISSIONS * np.minimum(prior365, 3)
            + W_SEVERITY * severity
            + W_LOS_PER_DAY * np.minimum(los, 30)
            + np.array([W_DISPOSITION.get(d, 0.0) for d in DISPOSITIONS])[disposition]
            + W_LOW_ALBUMIN * (labs["albumin"] < 3.0)
            + W_HIGH_CREATININE * (labs["creatinine"] > 2.0)
            + W_LOW_HEMOGLOBIN * (labs["hemoglobin"] < 9.0)
            + W_LOW_SODIUM * (labs["sodium"] < 133)
            + W_TACHYCARDIA * (vitals["heart_rate"] > 100)
            + W_LIVES_ALONE * pts.lives_alone[who]
            + W_COST_BARRIER * pts.cost_barrier[who]
            + sum(w * symptoms[:, symptom_names.index(s)] for s, w in W_SYMPTOM_PRESENT.items())
            + W_OTHER_SYMPTOM * np.minimum(symptoms[:, other_symptoms].sum(axis=1), 2)
            + W_FOLLOWUP * followup
        )  # fmt: skip
        terminal = disposition >= DISPOSITIONS.index("HOSPICE")
        readmit = (rng.random(m) < _sigmoid(logit)) & ~terminal

        discharge = admit + los
        gap_readmit = 1 + 29 * rng.beta(1.1, 2.0, m)
        again = rng.random(m) < np.clip(0.3 + 0.08 * cond.sum(axis=1), 0, 0.8)
        gap_later = 31 + rng.exponential(250, m)
        next_admit[who] = discharge + np.where(readmit, gap_readmit, gap_later)
        # A readmission is always recorded, even past the study end, so the label is exact.
        active[who] = ~terminal & (readmit | (again & (next_admit[who] < STUDY_DAYS)))

        for key, value in (
            ("patient", who), ("admit", admit), ("discharge", discharge), ("type", adm_type),
            ("via_ed", via_ed), ("disposition", disposition), ("problem", problem),
            ("severity", severity), ("readmit", readmit), ("prior365", prior365),
            ("symptoms", symptoms), ("denied", denied), ("followup", followup),
        ):  # fmt: skip
            stays[key].append(value)
        lab_final.append(labs)
        vital_final.append(vitals)

    s = {k: np.concatenate(v) for k, v in stays.items()}
    labs_all = {item: np.concatenate([lf[item] for lf in lab_final]) for item in LAB_RANGES}
    vitals_all = {item: np.concatenate([vf[item] for vf in vital_final]) for item in VITAL_RANGES}
    # Order stays by patient then time, so part files read like an EHR extract.
    order = np.lexsort((s["admit"], s["patient"]))
    s = {k: v[order] for k, v in s.items()}
    labs_all = {k: v[order] for k, v in labs_all.items()}
    vitals_all = {k: v[order] for k, v in vitals_all.items()}
    n_stays = len(order)
    stay_ids = np.array([f"A{block:05d}{i:06d}" for i in range(n_stays)], dtype=object)
    patient_of = s["patient"]

    tables = {
        "patients": _patients_table(pts),
        "admissions": to_raw_table(
            pa.table(
                {
                    "admission_id": stay_ids,
                    "patient_id": pts.ids[patient_of],
                    "admit_time": _to_timestamp(s["admit"]),
                    "discharge_time": _to_timestamp(s["discharge"]),
                    "admission_type": np.asarray(ADMISSION_TYPES, dtype=object)[s["type"]],
                    "via_emergency_department": s["via_ed"],
                    "discharge_disposition": np.asarray(DISPOSITIONS, dtype=object)[s["disposition"]],
                    "insurance": pts.insurance[patient_of],
                }
            ),
            "admissions",
        ),  # fmt: skip
        "diagnoses": _diagnoses_table(rng, stay_ids, pts.conditions[patient_of], s["problem"]),
        "labs": _measure_table(rng, stay_ids, s, labs_all, LAB_MEASURED_P, LAB_SPREAD, 3, "labs"),
        "vitals": _measure_table(rng, stay_ids, s, vitals_all, {}, VITAL_SPREAD, 4, "vitals"),
        "notes": _notes_table(rng, stay_ids, pts, s, symptom_names, scenario.note_template),
    }
    tables["labs"] = _report_labs(tables["labs"], scenario)
    if with_latents:
        tables["latents"] = pa.table({
            "admission_id": stay_ids,
            "readmit": s["readmit"],
            "lives_alone": pts.lives_alone[patient_of],
            "cost_barrier": pts.cost_barrier[patient_of],
            **{f"{name}_present": s["symptoms"][:, i] for i, name in enumerate(symptom_names)},
            **{f"{name}_denied": s["denied"][:, i] for i, name in enumerate(symptom_names)},
            **{f"has_{c}": pts.conditions[patient_of][:, COND[c]] for c in CONDITIONS},
        })  # fmt: skip
    return tables


def _report_labs(labs: pa.Table, scenario: _Scenario) -> pa.Table:
    """Recording shifts on the finished labs table: the patients' latent values (and so their
    risk) are those of the unshifted data; only what the lab system reports changes."""
    if scenario.dropped_labs:
        labs = labs.filter(pc.invert(pc.is_in(labs["item"], value_set=pa.array(scenario.dropped_labs))))
    if scenario.creatinine_umol:
        creat = pc.equal(labs["item"], "creatinine")
        umol = pc.round(pc.multiply(labs["value"], CREATININE_UMOL_PER_MG_DL), 1)
        labs = labs.set_column(
            labs.schema.get_field_index("value"),
            labs.schema.field("value"),
            pc.if_else(creat, umol, labs["value"]),
        )
        labs = labs.set_column(
            labs.schema.get_field_index("unit"),
            labs.schema.field("unit"),
            pc.if_else(creat, pa.scalar("umol/L"), labs["unit"]),
        )
    return labs


def _patients_table(pts: _Patients) -> pa.Table:
    dob_days = pts.first_admit - pts.age0 * 365.25
    return to_raw_table(pa.table({
        "patient_id": pts.ids,
        "sex": pts.sex,
        "date_of_birth": _to_timestamp(dob_days).astype("datetime64[D]"),
        "ethnicity": pts.ethnicity,
        "date_of_death": pa.nulls(len(pts.ids), pa.date32()),
    }), "patients")  # fmt: skip


def _diagnoses_table(
    rng: np.random.Generator, stay_ids: np.ndarray, cond: np.ndarray, problem: np.ndarray
) -> pa.Table:
    coded = cond & (rng.random(cond.shape) < CODING_COMPLETENESS)
    stay_idx, cond_idx = np.nonzero(coded)
    names = list(CONDITIONS)
    cond_codes = np.array(
        [CONDITION_ICD10[names[c]][rng.integers(len(CONDITION_ICD10[names[c]]))] for c in cond_idx],
        dtype=object,
    )
    n_noise = rng.poisson(1.2, len(stay_ids))
    noise_idx = np.repeat(np.arange(len(stay_ids)), n_noise)
    noise_codes = np.asarray(NOISE_ICD10, dtype=object)[rng.integers(len(NOISE_ICD10), size=len(noise_idx))]
    primary = np.array([PROBLEM_INFO[p][0] for p in PRIMARY_PROBLEMS], dtype=object)[problem]
    idx = np.concatenate([np.arange(len(stay_ids)), stay_idx, noise_idx])
    codes = np.concatenate([primary, cond_codes, noise_codes])
    is_primary = np.concatenate(
        [np.ones(len(stay_ids), bool), np.zeros(len(stay_idx) + len(noise_idx), bool)]
    )
    order = np.lexsort((~is_primary, idx))
    idx, codes = idx[order], codes[order]
    seq = _rank_within(idx)
    return to_raw_table(pa.table({
        "admission_id": stay_ids[idx],
        "icd_code": codes,
        "icd_version": np.full(len(idx), 10, dtype=np.int8),
        "seq_num": (seq + 1).astype(np.int16),
    }), "diagnoses")  # fmt: skip


def _measure_table(
    rng: np.random.Generator,
    stay_ids: np.ndarray,
    s: dict[str, np.ndarray],
    final: dict[str, np.ndarray],
    measured_p: dict[str, float],
    spread: dict[str, float],
    max_count: int,
    table: str,
) -> pa.Table:
    ranges = LAB_RANGES if table == "labs" else VITAL_RANGES
    rows = _measurements(
        rng, np.arange(len(stay_ids)), s["admit"], s["discharge"], final, measured_p, spread, max_count
    )
    values = np.round(_clip_items(rows["value"], rows["item"], ranges), 2)
    columns: dict[str, Any] = {
        "admission_id": stay_ids[rows["stay"]],
        "charttime": _to_timestamp(rows["time"]),
        "item": rows["item"],
        "value": values,
    }
    if table == "labs":
        columns["unit"] = np.array([ranges[i].unit for i in rows["item"]], dtype=object)
    return to_raw_table(pa.table(columns), table)


def _notes_table(
    rng: np.random.Generator,
    stay_ids: np.ndarray,
    pts: _Patients,
    s: dict[str, np.ndarray],
    symptom_names: list[str],
    template: str = "standard",
) -> pa.Table:
    """One discharge summary per stay (5% missing, none for deaths), some nursing notes."""
    names = list(CONDITIONS)
    texts, ids, times, cats = [], [], [], []
    missing = rng.random(len(stay_ids)) < 0.05
    for i in range(len(stay_ids)):
        p = s["patient"][i]
        disposition = DISPOSITIONS[s["disposition"][i]]
        if missing[i] or disposition in ("DIED", "HOSPICE"):
            continue
        has = pts.conditions[p]
        implied = PROBLEM_INFO[PRIMARY_PROBLEMS[s["problem"][i]]][1]  # "CHF exacerbation" implies chf
        absent = [c for c, h in zip(names, has, strict=True) if not h and c != implied]
        n_denied = int(rng.integers(0, 3))
        denied_history = [
            absent[j] for j in rng.choice(len(absent), min(n_denied, len(absent)), replace=False)
        ]
        n_family = int(rng.integers(0, 3))
        family = [
            (RELATIVES[rng.integers(len(RELATIVES))], names[rng.integers(len(names))])
            for _ in range(n_family)
        ]
        history = [c for c, h in zip(names, has, strict=True) if h]
        meds = sorted({m for c in history for m in MEDICATIONS[c]})
        facts = NoteFacts(
            age=int(pts.age0[p] + (s["admit"][i] - pts.first_admit[p]) / 365.25),
            sex=str(pts.sex[p]),
            primary_problem=PRIMARY_PROBLEMS[s["problem"][i]],
            los_days=float(s["discharge"][i] - s["admit"][i]),
            disposition=disposition,
            history=history,
            denied_history=denied_history,
            family_history=family,
            symptoms_present=[n for n, v in zip(symptom_names, s["symptoms"][i], strict=True) if v],
            symptoms_denied=[n for n, v in zip(symptom_names, s["denied"][i], strict=True) if v],
            lives_alone=bool(pts.lives_alone[p]),
            cannot_afford_medications=bool(pts.cost_barrier[p]),
            medications=meds,
            followup_arranged=bool(s["followup"][i]),
        )
        texts.append(render_discharge_summary(rng, facts, template))
        ids.append(stay_ids[i])
        times.append(s["discharge"][i])
        cats.append(DISCHARGE_SUMMARY)
        if rng.random() < 0.2:
            texts.append("Nursing: pt resting comfortably, VSS, tolerating diet. Will continue to monitor.")
            ids.append(stay_ids[i])
            times.append(s["admit"][i] + 0.3)
            cats.append("Nursing")
    return to_raw_table(pa.table({
        "admission_id": np.asarray(ids, dtype=object),
        "charttime": _to_timestamp(np.asarray(times, dtype=float)),
        "category": np.asarray(cats, dtype=object),
        "text": np.asarray(texts, dtype=object),
    }), "notes")  # fmt: skip


def _write_block(
    seed: int, block: int, n_patients: int, staging: Location, shift: tuple[str, ...] = ()
) -> dict[str, int]:
    tables = generate_block(seed, block, n_patients, shift=shift)
    for name, table in tables.items():
        write_part(staging, name, table, block)
    return {name: t.num_rows for name, t in tables.items()}


def block_sizes(n_patients: int) -> list[int]:
    full, rest = divmod(n_patients, BLOCK_PATIENTS)
    return [BLOCK_PATIENTS] * full + ([rest] if rest else [])


def generate(
    n_patients: int,
    seed: int,
    out: str,
    overwrite: bool = False,
    max_in_flight: int | None = None,
    shift: str | Iterable[str] | None = None,
) -> dict[str, Any]:
    """Generate `n_patients` patients as a raw EHR folder at `out` (local or s3://), optionally
    shifted (`SHIFTS`); the manifest's source records the shifts, so a monitor knows the truth."""
    import ray

    if n_patients < 1:
        raise ValueError(f"--patients must be at least 1, got {n_patients}")
    shifts = parse_shifts(shift)
    sizes = block_sizes(n_patients)
    remote_block = ray.remote(num_cpus=1)(_write_block)
    limit = max_in_flight or max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)
    target = resolve(out)
    started = time.perf_counter()
    totals: dict[str, int] = {}
    with staged_output(target, overwrite) as staging:
        pending: list[Any] = []
        for block, size in enumerate(sizes):
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                _add(totals, ray.get(done[0]))
            pending.append(remote_block.remote(seed, block, size, staging, shifts))
        for counts in ray.get(pending):
            _add(totals, counts)
        source = {
            "kind": "synthetic",
            "seed": seed,
            "patients": n_patients,
            "generator_version": GENERATOR_VERSION,
            "block_patients": BLOCK_PATIENTS,
            "shift": list(shifts),
        }
        manifest = write_raw_manifest(staging, source, totals, patient_parts=len(sizes))
    log.info(
        "generated %s%s in %.1fs: %s",
        target.uri,
        f" (shift: {', '.join(shifts)})" if shifts else "",
        time.perf_counter() - started,
        totals,
    )
    return manifest


def _add(totals: dict[str, int], counts: dict[str, int]) -> None:
    for name, rows in counts.items():
        totals[name] = totals.get(name, 0) + rows
