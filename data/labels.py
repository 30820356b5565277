"""Clinical names and units for feature columns: what an explanation shows a clinician.

A factor reads "Prior admissions (365 days): 3", "Albumin, last: 2.5 g/dL", "Chest pain
(note): reported" instead of `prior_admissions_365d`, `albumin_last`, `note_chest_pain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from data.concepts import CONCEPTS, NOTE_PREFIX
from data.schema import LAB_RANGES, VITAL_RANGES

STAY_LABELS: dict[str, tuple[str, str | None]] = {
    "age": ("Age", "years"),
    "sex": ("Sex", None),
    "ethnicity": ("Ethnicity", None),
    "admission_type": ("Admission type", None),
    "via_emergency_department": ("Admitted via the ED", None),
    "discharge_disposition": ("Discharge disposition", None),
    "insurance": ("Insurance", None),
    "los_days": ("Length of stay", "days"),
    "prior_admissions_365d": ("Prior admissions (365 days)", "admissions"),
    "prior_ed_visits_365d": ("Prior ED visits (365 days)", "visits"),
    "days_since_last_discharge": ("Days since last discharge", "days"),
    "charlson_index": ("Charlson comorbidity index (codes)", "points"),
    "charlson_all_sources": ("Charlson comorbidity index (codes and note)", "points"),
    "n_diagnoses": ("Number of diagnosis codes", "codes"),
}
COUNT_LABELS = {
    f"{NOTE_PREFIX}n_symptoms": "Symptoms present at discharge (note)",
    f"{NOTE_PREFIX}n_conditions": "Chronic conditions (note)",
}
STAT_LABELS = {"last": "last", "min": "lowest", "max": "highest", "mean": "mean", "count": "measurements"}
ITEM_NAMES = {
    "heart_rate": "Heart rate", "sbp": "Systolic BP", "dbp": "Diastolic BP", "resp_rate": "Respiratory rate",
    "temperature": "Temperature", "spo2": "SpO2", "creatinine": "Creatinine", "bun": "BUN",
    "sodium": "Sodium", "potassium": "Potassium", "glucose": "Glucose", "hemoglobin": "Hemoglobin",
    "wbc": "WBC", "albumin": "Albumin", "bnp": "BNP", "lactate": "Lactate",
}  # fmt: skip


@dataclass(frozen=True)
class FeatureLabel:
    label: str
    unit: str | None
    display: str  # the value as a clinician reads it, "unknown (not given)" when missing
    known: bool


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"


def _unknown(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe(feature: str, value: Any) -> FeatureLabel:
    """Label, unit and readable value of one feature's value."""
    known = not _unknown(value)
    if feature in COUNT_LABELS:
        shown = "unknown (no note)" if not known else "none" if not value else _number(float(value))
        return FeatureLabel(COUNT_LABELS[feature], None, shown, known)
    if feature.startswith(NOTE_PREFIX):
        concept = CONCEPTS.get(feature.removeprefix(NOTE_PREFIX))
        label = f"{concept.label if concept else feature} (note)"
        social = concept is None or concept.kind == "social"
        if not known:
            shown = "not stated, or no note" if social else "unknown (no note)"
        elif social:
            shown = "yes" if value else "no"
        else:
            shown = "present" if value else "not present"
        return FeatureLabel(label, None, shown, known)
    if feature.startswith("cci_"):
        label = f"Charlson: {feature.removeprefix('cci_').replace('_', ' ')}"
        shown = "unknown (no diagnoses given)" if not known else "coded" if value else "not coded"
        return FeatureLabel(label, None, shown, known)
    if feature in STAY_LABELS:
        label, unit = STAY_LABELS[feature]
    else:
        item, _, stat = feature.rpartition("_")
        spec = LAB_RANGES.get(item) or VITAL_RANGES.get(item)
        if spec is None or stat not in STAT_LABELS:
            return FeatureLabel(feature, None, "unknown (not given)" if not known else str(value), known)
        label = f"{ITEM_NAMES.get(item, item)}, {STAT_LABELS[stat]}"
        unit = None if stat == "count" else spec.unit
    if not known:
        return FeatureLabel(label, unit, "unknown (not given)", False)
    if isinstance(value, bool):
        return FeatureLabel(label, unit, "yes" if value else "no", True)
    if isinstance(value, int | float):
        shown_unit = unit[:-1] if unit and value == 1 and unit.endswith("s") else unit  # 1 point
        return FeatureLabel(label, unit, f"{_number(value)} {shown_unit}" if unit else _number(value), True)
    return FeatureLabel(label, unit, str(value), True)
