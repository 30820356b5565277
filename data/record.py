"""A patient record: the raw facts of one stay in one object, and its features.

Why here, in the data layer: a record is just another way to hold the rows of the raw EHR
tables. `record_features` lays a record out as those rows (measurements in time order, ICD
codes, the discharge note) and runs the very transforms the Ray Data pipeline runs
(`data.features.measurement_features`, `diagnosis_features`, `note_features`), so a served
record and a training row are built by one definition. Only the stay-level values (age, LOS,
prior admissions, ...) arrive already derived, because a record has no history to derive them
from; they get the pipeline's own limits (age capped at 90).

What "not in the record" means, per group (`FEATURE_GROUPS`), is written down once here:

| group | not given means | model input |
|---|---|---|
| demographics, stay, utilisation fields | unknown | NaN (the model was trained with such rows) |
| `diagnoses` absent | unknown | Charlson index, code count and flags NaN |
| `diagnoses: []` | known: no codes | Charlson 0, count 0, flags false (as a stay without codes) |
| a lab or vital item absent | not measured | stats NaN, count 0 (exactly as in training) |
| `clinical_note` absent | unknown | every note concept NaN |
| a concept not mentioned in a given note | not present | 0 (living situation, follow-up: NaN, "not said") |

Training sees the same: `mask_groups` blanks whole groups of training rows at random in the
same way (`ml.tabular`), so a partial record is in distribution instead of being routed down
whatever branch XGBoost picked for values it never saw missing.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from data.concepts import NOTE_DECREASING, NOTE_FEATURES, NOTE_INCREASING
from data.schema import DISCHARGE_SUMMARY, LAB_RANGES, VITAL_RANGES

MAX_VALUES = 5_000  # measurements of one item per stay (a 50-day stay charted every 15 minutes)


def _plain_text(value: str) -> str:
    """Text a database and a tokenizer take as it is: no NUL (PostgreSQL refuses it) and no lone
    surrogate (not encodable as UTF-8). The value is never echoed."""
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    return value


# Strict types: `true` or "67" is not a number here (lax parsing stored `age: true` as 1.0), and
# NaN, Infinity and 1e400 are refused by name instead of failing later.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True)]
Text = Annotated[str, AfterValidator(_plain_text)]
Measurement = Number | Annotated[list[Number], Field(max_length=MAX_VALUES)]


def _check_range(name: str, value: Measurement | None, low: float, high: float, unit: str) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{name}: give at least one value or leave it out")
    for v in values:
        if not math.isfinite(v) or not low <= v <= high:
            # The value itself is not echoed: error bodies and logs carry no patient values.
            raise ValueError(f"{name}: a value is outside the possible range {low}-{high} {unit}")


class Vitals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heart_rate: Measurement | None = None
    sbp: Measurement | None = Field(None, description="Systolic blood pressure, mmHg.")
    dbp: Measurement | None = Field(None, description="Diastolic blood pressure, mmHg.")
    resp_rate: Measurement | None = None
    temperature: Measurement | None = Field(None, description="Degrees Celsius.")
    spo2: Measurement | None = Field(None, description="Oxygen saturation, %.")

    @model_validator(mode="after")
    def _ranges(self) -> Vitals:
        for name, spec in VITAL_RANGES.items():
            _check_range(name, getattr(self, name, None), spec.low, spec.high, spec.unit)
        return self


class Labs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    creatinine: Measurement | None = None
    bun: Measurement | None = None
    sodium: Measurement | None = None
    potassium: Measurement | None = None
    glucose: Measurement | None = None
    hemoglobin: Measurement | None = None
    wbc: Measurement | None = None
    albumin: Measurement | None = None
    bnp: Measurement | None = None
    lactate: Measurement | None = None

    @model_validator(mode="after")
    def _ranges(self) -> Labs:
        for name, spec in LAB_RANGES.items():
            _check_range(name, getattr(self, name, None), spec.low, spec.high, spec.unit)
        return self


class PatientRecord(BaseModel):
    """One stay at discharge. Everything is optional; unknown fields are refused (typos)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"age": 67, "blood_pressure": 140, "clinical_note": "Patient presents with chest pain..."}
            ]
        },
    )

    patient_id: Annotated[Text, Field(min_length=1, max_length=128)] | None = Field(
        None, description="Keeps a patient on one variant; stored only as a salted hash."
    )
    age: Number | None = Field(None, ge=0, le=120)
    sex: Literal["M", "F", "U"] | None = None
    ethnicity: Text | None = Field(None, max_length=64)
    admission_type: Text | None = Field(None, max_length=32)
    via_emergency_department: Annotated[bool, Field(strict=True)] | None = None
    discharge_disposition: Text | None = Field(None, max_length=64)
    insurance: Text | None = Field(None, max_length=64)
    los_days: Number | None = Field(None, ge=0, le=3650)
    prior_admissions_365d: Count | None = Field(None, ge=0, le=365)
    prior_ed_visits_365d: Count | None = Field(None, ge=0, le=1000)
    days_since_last_discharge: Number | None = Field(None, ge=0, le=36500)
    diagnoses: list[Annotated[Text, Field(min_length=2, max_length=10)]] | None = Field(
        None, max_length=500, description="ICD codes of this stay."
    )
    icd_version: Literal[9, 10] = 10
    vitals: Vitals | None = None
    labs: Labs | None = None
    heart_rate: Measurement | None = Field(None, description="Shorthand for vitals.heart_rate.")
    blood_pressure: Measurement | None = Field(None, description="Shorthand for vitals.sbp (systolic).")
    clinical_note: Text | None = Field(None, description="Discharge summary; never logged.")

    @field_validator("heart_rate")
    @classmethod
    def _heart_rate(cls, value: Measurement | None) -> Measurement | None:
        spec = VITAL_RANGES["heart_rate"]
        _check_range("heart_rate", value, spec.low, spec.high, spec.unit)
        return value

    @field_validator("blood_pressure")
    @classmethod
    def _blood_pressure(cls, value: Measurement | None) -> Measurement | None:
        spec = VITAL_RANGES["sbp"]
        _check_range("blood_pressure", value, spec.low, spec.high, spec.unit)
        return value

    def measurements(self) -> dict[str, Measurement]:
        """Vitals and labs by item name, shorthands folded in (the nested value wins)."""
        items: dict[str, Measurement] = {}
        if self.heart_rate is not None:
            items["heart_rate"] = self.heart_rate
        if self.blood_pressure is not None:
            items["sbp"] = self.blood_pressure
        for group in (self.vitals, self.labs):
            if group is not None:
                items |= {k: v for k, v in group.model_dump(exclude_none=True).items()}
        return items

    def note_text(self) -> str | None:
        text = (self.clinical_note or "").strip()
        return text or None


# --- what each input feeds, and what its absence means --------------------------------------------

STAY_FIELDS = (
    "age", "sex", "ethnicity", "admission_type", "via_emergency_department", "discharge_disposition",
    "insurance", "los_days", "prior_admissions_365d", "prior_ed_visits_365d", "days_since_last_discharge",
)  # fmt: skip
COUNT_FIELDS = ("prior_admissions_365d", "prior_ed_visits_365d")  # whole numbers only
INPUTS = (*STAY_FIELDS, "diagnoses", "vitals", "labs", "clinical_note")  # what `missing` names
STATS = ("last", "min", "max", "mean", "count")
# Groups of feature columns that are known or unknown together (training blanks them as a whole).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "demographics": ("age", "sex", "ethnicity", "insurance"),
    "stay": ("admission_type", "via_emergency_department", "discharge_disposition", "los_days"),
    "utilisation": ("prior_admissions_365d", "prior_ed_visits_365d", "days_since_last_discharge"),
    "diagnoses": ("charlson_index", "n_diagnoses"),  # + every cci_* flag
    "vitals": tuple(f"{item}_{stat}" for item in VITAL_RANGES for stat in STATS),
    "labs": tuple(f"{item}_{stat}" for item in LAB_RANGES for stat in STATS),
    "note": tuple(NOTE_FEATURES),
}
# Where medicine is clear, more never lowers the risk (XGBoost monotone constraints): more prior
# admissions, ED visits, Charlson points or days in hospital; a symptom still present, a chronic
# condition, living alone or a cost barrier documented in the note. Follow-up arranged never
# raises it.
MONOTONE_INCREASING = (
    "prior_admissions_365d", "prior_ed_visits_365d", "charlson_index", "charlson_all_sources", "los_days",
    *NOTE_INCREASING,
)  # fmt: skip
MONOTONE_DECREASING = NOTE_DECREASING


def group_columns(group: str, columns: list[str]) -> list[str]:
    """The feature columns of `group` among `columns`."""
    names = set(FEATURE_GROUPS[group])
    return [c for c in columns if c in names or (group == "diagnoses" and c.startswith("cci_"))]


def blank_group(frame: pd.DataFrame, group: str, rows: np.ndarray) -> None:
    """Make `group` unknown in `rows` (a boolean mask), exactly as an absent record input is."""
    for column in group_columns(group, list(frame.columns)):
        if column.endswith("_count"):
            frame.loc[rows, column] = 0  # no measurement of an item: count 0, stats unknown
            continue
        if pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = frame[column].astype(object)  # True / False / None
        elif pd.api.types.is_integer_dtype(frame[column]):
            frame[column] = frame[column].astype("float64")
        frame.loc[rows, column] = None


def mask_groups(frame: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """A copy of `frame` in which each feature group of each row is unknown with probability
    `rate`: training rows that look like partial records."""
    from data.features import ALL_SOURCES, comorbidity_features

    rng = np.random.default_rng(seed)
    out = frame.copy()
    for group in FEATURE_GROUPS:
        if group_columns(group, list(out.columns)):
            blank_group(out, group, rng.random(len(out)) < rate)
    return comorbidity_features(out) if ALL_SOURCES in out else out  # derived from two groups


def missing_inputs(record: PatientRecord) -> list[str]:
    """The record's top-level inputs that were not given (shorthands count for vitals)."""
    given = {name for name in STAY_FIELDS if getattr(record, name) is not None}
    if record.diagnoses is not None:
        given.add("diagnoses")
    measured = record.measurements()
    if any(item in VITAL_RANGES for item in measured):
        given.add("vitals")
    if any(item in LAB_RANGES for item in measured):
        given.add("labs")
    if record.note_text() is not None:
        given.add("clinical_note")
    return [name for name in INPUTS if name not in given]


def completeness(missing: list[str]) -> float:
    """Share of the record's inputs that were given."""
    return round(1 - len(missing) / len(INPUTS), 4)


# --- a record as raw-table rows, through the pipeline's transforms ------------------------------


def record_tables(records: list[PatientRecord]) -> dict[str, pd.DataFrame]:
    """The records as rows of the raw tables (admission_id = the record's index)."""
    measured, codes, notes = [], [], []
    for i, record in enumerate(records):
        sid = str(i)
        for item, value in record.measurements().items():
            values = value if isinstance(value, list) else [value]
            measured += [(sid, float(t), item, float(v)) for t, v in enumerate(values)]
        for code in record.diagnoses or []:
            codes.append((sid, code, record.icd_version))
        text = record.note_text()
        if text is not None:
            notes.append((sid, 0.0, DISCHARGE_SUMMARY, text))
    return {
        "measurements": pd.DataFrame(measured, columns=["admission_id", "charttime", "item", "value"]),
        "diagnoses": pd.DataFrame(codes, columns=["admission_id", "icd_code", "icd_version"]),
        "notes": pd.DataFrame(notes, columns=["admission_id", "charttime", "category", "text"]),
    }


def record_features(records: list[PatientRecord]) -> pd.DataFrame:
    """One feature row per record, in the pipeline's column order (no ids, label or split)."""
    from data.features import (
        MAX_AGE,
        OUTPUT_ORDER,
        TEXT_COLUMN,
        comorbidity_features,
        diagnosis_features,
        fill_absent,
        measurement_features,
        note_features,
    )

    tables = record_tables(records)
    stays = pd.DataFrame(
        [{name: getattr(r, name) for name in STAY_FIELDS} for r in records], columns=list(STAY_FIELDS)
    )
    stays = stays.astype({"age": "float64", "los_days": "float64", "days_since_last_discharge": "float64"})
    stays["age"] = stays["age"].clip(upper=MAX_AGE)
    stays.insert(0, "admission_id", [str(i) for i in range(len(records))])
    frame = stays
    for part in (
        measurement_features(tables["measurements"]),
        diagnosis_features(tables["diagnoses"]),
        note_features(tables["notes"]),
    ):
        frame = frame.merge(part.to_pandas(), on="admission_id", how="left")
    known_codes = np.array([r.diagnoses is not None for r in records])
    frame = comorbidity_features(fill_absent(frame, diagnoses_known=known_codes))
    columns = [c for c in OUTPUT_ORDER if c not in ("admission_id", "patient_id", "label", TEXT_COLUMN)]
    return frame.reindex(columns=columns).reset_index(drop=True)


def feature_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Feature rows as plain dicts, unknowns as None (what the prediction store keeps)."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows
    ]
