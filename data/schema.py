"""The raw EHR schema: MIMIC-like tables every source is converted into.

Each table is a pyarrow schema whose fields carry a one-line description in their metadata,
so `python -m data schema` can document the layout from the code itself. Value rules
(plausible ranges for labs and vitals) live here too, next to the columns they constrain,
because the validator and the synthetic generator must agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = "1.0"


def _field(name: str, dtype: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={"doc": doc})


TIMESTAMP = pa.timestamp("us")

TABLES: dict[str, pa.Schema] = {
    "patients": pa.schema(
        [
            _field("patient_id", pa.string(), "Stable pseudonymous patient key.", False),
            _field("sex", pa.string(), "Administrative sex: M, F or U (unknown)."),
            _field("date_of_birth", pa.date32(), "Date of birth (shifted in de-identified data)."),
            _field("ethnicity", pa.string(), "Self-reported ethnicity, free vocabulary."),
            _field("date_of_death", pa.date32(), "Date of death if known, else null."),
        ]
    ),
    "admissions": pa.schema(
        [
            _field("admission_id", pa.string(), "Hospital stay key.", False),
            _field("patient_id", pa.string(), "Foreign key to patients.", False),
            _field("admit_time", TIMESTAMP, "Admission time.", False),
            _field("discharge_time", TIMESTAMP, "Discharge time; not before admit_time.", False),
            _field("admission_type", pa.string(), "EMERGENCY, URGENT, ELECTIVE or NEWBORN."),
            _field(
                "via_emergency_department",
                pa.bool_(),
                "Whether the stay started in the emergency department (an ED visit).",
            ),
            _field(
                "discharge_disposition",
                pa.string(),
                "HOME, HOME_HEALTH, SNF, REHAB, AMA, HOSPICE, DIED or OTHER.",
            ),
            _field("insurance", pa.string(), "Payer class, e.g. Medicare, Medicaid, Private."),
        ]
    ),
    "diagnoses": pa.schema(
        [
            _field("admission_id", pa.string(), "Foreign key to admissions.", False),
            _field("icd_code", pa.string(), "ICD code without the dot, e.g. I509.", False),
            _field("icd_version", pa.int8(), "9 or 10."),
            _field("seq_num", pa.int16(), "Priority of the code within the stay (1 = primary)."),
        ]
    ),
    "labs": pa.schema(
        [
            _field("admission_id", pa.string(), "Foreign key to admissions.", False),
            _field("charttime", TIMESTAMP, "When the specimen was taken."),
            _field("item", pa.string(), "Normalised lab name, see LAB_RANGES.", False),
            _field("value", pa.float64(), "Numeric result in the unit below."),
            _field("unit", pa.string(), "Unit of value, e.g. mg/dL."),
        ]
    ),
    "vitals": pa.schema(
        [
            _field("admission_id", pa.string(), "Foreign key to admissions.", False),
            _field("charttime", TIMESTAMP, "When the vital sign was charted."),
            _field("item", pa.string(), "Normalised vital name, see VITAL_RANGES.", False),
            _field("value", pa.float64(), "Numeric value in the item's standard unit."),
        ]
    ),
    "notes": pa.schema(
        [
            _field("admission_id", pa.string(), "Foreign key to admissions.", False),
            _field("charttime", TIMESTAMP, "When the note was written."),
            _field("category", pa.string(), "Note type, e.g. 'Discharge summary'."),
            _field("text", pa.string(), "Free text of the note (sensitive: never logged)."),
        ]
    ),
}

# Tables a source must provide; notes may be absent (structured-only sources).
REQUIRED_TABLES = ("patients", "admissions", "diagnoses", "labs", "vitals")
OPTIONAL_TABLES = ("notes",)

DISCHARGE_SUMMARY = "Discharge summary"
# Dispositions after which a readmission cannot happen; such stays get no label.
TERMINAL_DISPOSITIONS = ("DIED", "HOSPICE")


@dataclass(frozen=True)
class ItemRange:
    """Physiologically possible range (not a normal range): outside it, the value is an error."""

    unit: str
    low: float
    high: float


LAB_RANGES: dict[str, ItemRange] = {
    "creatinine": ItemRange("mg/dL", 0.05, 30.0),
    "bun": ItemRange("mg/dL", 1.0, 300.0),
    "sodium": ItemRange("mmol/L", 90.0, 200.0),
    "potassium": ItemRange("mmol/L", 1.0, 12.0),
    "glucose": ItemRange("mg/dL", 10.0, 2000.0),
    "hemoglobin": ItemRange("g/dL", 1.0, 25.0),
    "wbc": ItemRange("K/uL", 0.0, 500.0),
    "albumin": ItemRange("g/dL", 0.5, 7.0),
    "bnp": ItemRange("pg/mL", 0.0, 50000.0),
    "lactate": ItemRange("mmol/L", 0.1, 30.0),
}

VITAL_RANGES: dict[str, ItemRange] = {
    "heart_rate": ItemRange("bpm", 0.0, 300.0),
    "sbp": ItemRange("mmHg", 0.0, 300.0),
    "dbp": ItemRange("mmHg", 0.0, 250.0),
    "resp_rate": ItemRange("/min", 0.0, 80.0),
    "temperature": ItemRange("degC", 25.0, 45.0),
    "spo2": ItemRange("%", 0.0, 100.0),
}

ITEM_RANGES = {"labs": LAB_RANGES, "vitals": VITAL_RANGES}

MAX_AGE_YEARS = 120


def describe() -> str:
    """Human-readable layout of every table, built from the schema metadata."""
    lines = [f"MediScale raw EHR schema v{SCHEMA_VERSION}"]
    for name, schema in TABLES.items():
        need = "required" if name in REQUIRED_TABLES else "optional"
        lines.append(f"\n{name} ({need})")
        for f in schema:
            doc = (f.metadata or {}).get(b"doc", b"").decode()
            null = "" if f.nullable else ", not null"
            lines.append(f"  {f.name:<26} {str(f.type):<14}{null:<10} {doc}")
    return "\n".join(lines)
