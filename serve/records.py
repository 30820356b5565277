"""The HTTP API's patient record and its translation into the tabular model's features.

A record may be partial: every field is optional, and what is missing stays missing (the
model was trained with missing values). Measurements are given as one number or a list in
time order; they become the same last/min/max/mean/count features the Ray Data pipeline
computes from the lab and vital tables, so a served record and a training row mean the same.
Diagnoses are ICD codes; the Charlson flags and index come from `data.charlson`, as in
training. Values outside the physiological ranges of `data.schema` are refused (422) with the
field named, the same ranges the raw-data validator enforces.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data import charlson
from data.schema import LAB_RANGES, VITAL_RANGES

Measurement = float | list[float]
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_BATCH = 256


def _check_range(name: str, value: Measurement | None, low: float, high: float, unit: str) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{name}: give at least one value or leave it out")
    for v in values:
        if not math.isfinite(v) or not low <= v <= high:
            raise ValueError(f"{name}: {v} is outside the possible range {low}-{high} {unit}")


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

    patient_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        None, description="Keeps a patient on one variant; stored only as a salted hash."
    )
    age: float | None = Field(None, ge=0, le=120)
    sex: Literal["M", "F", "U"] | None = None
    ethnicity: str | None = Field(None, max_length=64)
    admission_type: str | None = Field(None, max_length=32)
    via_emergency_department: bool | None = None
    discharge_disposition: str | None = Field(None, max_length=64)
    insurance: str | None = Field(None, max_length=64)
    los_days: float | None = Field(None, ge=0, le=3650)
    prior_admissions_365d: int | None = Field(None, ge=0, le=365)
    prior_ed_visits_365d: int | None = Field(None, ge=0, le=1000)
    days_since_last_discharge: float | None = Field(None, ge=0, le=36500)
    diagnoses: list[Annotated[str, Field(min_length=2, max_length=10)]] | None = Field(
        None, max_length=500, description="ICD codes of this stay."
    )
    icd_version: Literal[9, 10] = 10
    vitals: Vitals | None = None
    labs: Labs | None = None
    heart_rate: Measurement | None = Field(None, description="Shorthand for vitals.heart_rate.")
    blood_pressure: Measurement | None = Field(None, description="Shorthand for vitals.sbp (systolic).")
    clinical_note: str | None = Field(None, description="Discharge summary; never logged.")

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


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[PatientRecord] = Field(..., min_length=1, max_length=MAX_BATCH)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., pattern=REQUEST_ID_PATTERN)
    outcome: bool = Field(..., description="Readmitted within 30 days.")
    source: str | None = Field(None, max_length=64)


class Factor(BaseModel):
    feature: str
    value: float | str | None
    contribution: float = Field(..., description="Log-odds pushed up (+) or down (-).")


class Prediction(BaseModel):
    request_id: str
    risk: float
    risk_band: Literal["low", "medium", "high"]
    variant: str
    model_versions: dict[str, str]
    components: dict[str, float | None]
    note_used: bool
    explanation: str
    top_factors: list[Factor]


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


SIMPLE_FIELDS = (
    "age",
    "sex",
    "ethnicity",
    "admission_type",
    "via_emergency_department",
    "discharge_disposition",
    "insurance",
    "los_days",
    "prior_admissions_365d",
    "prior_ed_visits_365d",
    "days_since_last_discharge",
)


def record_features(record: PatientRecord, feature_names: list[str]) -> dict[str, Any]:
    """The tabular model's feature row for a record; what the record does not say is None."""
    row: dict[str, Any] = dict.fromkeys(feature_names)
    for name in SIMPLE_FIELDS:
        if name in row:
            row[name] = getattr(record, name)
    for item, value in record.measurements().items():
        values = np.asarray(value if isinstance(value, list) else [value], dtype=float)
        stats = {
            "last": values[-1],
            "min": values.min(),
            "max": values.max(),
            "mean": values.mean(),
            "count": float(len(values)),
        }
        for stat, number in stats.items():
            if f"{item}_{stat}" in row:
                row[f"{item}_{stat}"] = float(number)
    if record.diagnoses is not None:
        codes = pd.Series(record.diagnoses, dtype=str)
        flags = charlson.category_flags(codes, pd.Series([record.icd_version] * len(codes))).any()
        for name in charlson.CATEGORIES:
            if f"cci_{name}" in row:
                row[f"cci_{name}"] = bool(flags.get(name, False))
        if "charlson_index" in row:
            row["charlson_index"] = (
                float(charlson.charlson_index(flags.to_frame().T).iloc[0]) if len(codes) else 0.0
            )
        if "n_diagnoses" in row:
            row["n_diagnoses"] = float(len(codes))
    return row


def risk_band(risk: float, medium: float, high: float) -> Literal["low", "medium", "high"]:
    return "high" if risk >= high else "medium" if risk >= medium else "low"
