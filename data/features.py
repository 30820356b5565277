"""Raw EHR folder -> feature folder, with Ray Data from read to write.

Every transform is a pure pandas function over a *complete* group of rows (all rows of some
admissions, or all stays of some patients). Ray Data hash-partitions each table by its key so
every block holds complete groups, then maps these functions over blocks; `build_features_pandas`
applies the very same functions to whole tables in one process, which is both the reference
the tests compare against and the benchmark's baseline.

One output row per admission that can be readmitted (stays ending in death or hospice are
dropped). The label is 1 when the same patient is admitted again within 30 days of discharge.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from data import charlson
from data.concepts import NOTE_FEATURES, note_concept_values
from data.featureset import (
    DEFAULT_FRACTIONS,
    LABEL,
    SPLIT_COLUMN,
    FeatureSpec,
    hive_to_split_dirs,
    split_of,
    write_manifest,
)
from data.raw import table_files
from data.schema import (
    DISCHARGE_SUMMARY,
    ITEM_RANGES,
    LAB_RANGES,
    TABLES,
    TERMINAL_DISPOSITIONS,
    VITAL_RANGES,
)
from data.storage import Location, resolve, staged_output
from data.validate import validate_raw

log = logging.getLogger(__name__)

READMISSION_DAYS = 30
LOOKBACK_DAYS = 365
MAX_AGE = 90  # MIMIC shifts ages over 89 to ~300; report them as 90
MAX_NOTE_CHARS = 20_000
STATS = ("last", "min", "max", "mean", "count")
MEASURED_ITEMS = (*LAB_RANGES, *VITAL_RANGES)
TEXT_COLUMN = "note"
ID_COLUMNS = ["admission_id", "patient_id"]

# --- output schemas: fixed, so every block agrees even when a block lacks some values --------

STAY_SCHEMA = pa.schema([
    ("admission_id", pa.string()), ("patient_id", pa.string()), (LABEL, pa.int8()),
    ("age", pa.float64()), ("sex", pa.string()), ("ethnicity", pa.string()),
    ("admission_type", pa.string()), ("via_emergency_department", pa.bool_()),
    ("discharge_disposition", pa.string()), ("insurance", pa.string()),
    ("los_days", pa.float64()), ("prior_admissions_365d", pa.int32()),
    ("prior_ed_visits_365d", pa.int32()), ("days_since_last_discharge", pa.float64()),
])  # fmt: skip
MEASUREMENT_SCHEMA = pa.schema(
    [("admission_id", pa.string())]
    + [
        (f"{item}_{stat}", pa.int32() if stat == "count" else pa.float64())
        for item in MEASURED_ITEMS
        for stat in STATS
    ]
)
DIAGNOSIS_SCHEMA = pa.schema(
    [("admission_id", pa.string()), ("charlson_index", pa.int32()), ("n_diagnoses", pa.int32())]
    + [(f"cci_{name}", pa.bool_()) for name in charlson.CATEGORIES]
)
NOTE_SCHEMA = pa.schema(
    [("admission_id", pa.string()), (TEXT_COLUMN, pa.string())]
    + [(name, pa.float64()) for name in NOTE_FEATURES]
)


def _to_schema(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


# --- per-group transforms (pure pandas, shared by the Ray and the single-process pipelines) ---


def stay_features(stays: pd.DataFrame) -> pa.Table:
    """Demographics, LOS, prior utilisation and the label; needs ALL stays of its patients."""
    df = stays.sort_values(["patient_id", "admit_time"], kind="stable").reset_index(drop=True)
    admit = df["admit_time"].to_numpy("datetime64[s]").astype(np.int64)
    discharge = df["discharge_time"].to_numpy("datetime64[s]").astype(np.int64)
    patient = pd.factorize(df["patient_id"])[0].astype(np.int64)
    # One sortable key per stay: patient first, then time, so searchsorted finds windows.
    span = int(max(admit.max(), discharge.max()) - min(admit.min(), discharge.min())) + 10 * 86_400 * 400
    base = min(admit.min(), discharge.min()) - 5 * 86_400 * 400
    key = patient * span + (admit - base)
    position = np.arange(len(df))
    window_start = np.searchsorted(key, key - LOOKBACK_DAYS * 86_400, side="left")
    ed = df["via_emergency_department"].fillna(False).to_numpy(bool).astype(np.int64)
    ed_before = np.concatenate([[0], np.cumsum(ed)])
    next_start = np.searchsorted(key, patient * span + (discharge - base), side="left")
    next_start = np.maximum(next_start, position + 1)  # never the stay itself
    has_next = next_start < len(df)
    next_idx = np.minimum(next_start, len(df) - 1)
    same_patient = has_next & (patient[next_idx] == patient)
    gap = admit[next_idx] - discharge
    previous = position - 1
    first_stay = (previous < 0) | (patient[np.maximum(previous, 0)] != patient)

    # In days, not nanoseconds: MIMIC's shifted ages (~300 years) overflow datetime64[ns].
    dob = np.asarray(df["date_of_birth"], dtype="datetime64[D]")
    years = (admit / 86_400 - dob.astype(np.int64)) / 365.25
    age = pd.Series(np.where(np.isnat(dob), np.nan, years), index=df.index)
    out = pd.DataFrame({
        "admission_id": df["admission_id"].astype(str),
        "patient_id": df["patient_id"].astype(str),
        LABEL: (same_patient & (gap <= READMISSION_DAYS * 86_400)).astype(np.int8),
        "age": age.clip(upper=MAX_AGE),
        "sex": df["sex"],
        "ethnicity": df["ethnicity"],
        "admission_type": df["admission_type"],
        "via_emergency_department": df["via_emergency_department"],
        "discharge_disposition": df["discharge_disposition"],
        "insurance": df["insurance"],
        "los_days": (discharge - admit) / 86_400,
        "prior_admissions_365d": (position - window_start).astype(np.int32),
        "prior_ed_visits_365d": (ed_before[position] - ed_before[window_start]).astype(np.int32),
        "days_since_last_discharge": np.where(
            first_stay, np.nan, (admit - discharge[np.maximum(previous, 0)]) / 86_400
        ),
    })  # fmt: skip
    keep = ~df["discharge_disposition"].isin(TERMINAL_DISPOSITIONS).to_numpy()
    return _to_schema(out.loc[keep], STAY_SCHEMA)


def measurement_features(rows: pd.DataFrame) -> pa.Table:
    """Last/min/max/mean/count per known lab and vital item; needs ALL rows of its stays."""
    rows = rows.loc[rows["item"].isin(MEASURED_ITEMS) & rows["value"].notna()]
    if rows.empty:
        return MEASUREMENT_SCHEMA.empty_table()
    ordered = rows.sort_values(["admission_id", "item", "charttime"], kind="stable")
    grouped = ordered.groupby(["admission_id", "item"], sort=False)["value"]
    stats = grouped.agg(["last", "min", "max", "mean", "count"])
    wide = stats.unstack("item")
    wide.columns = [f"{item}_{stat}" for stat, item in wide.columns]
    wide = wide.reindex(columns=MEASUREMENT_SCHEMA.names[1:])
    counts = [c for c in wide.columns if c.endswith("_count")]
    wide[counts] = wide[counts].fillna(0)
    return _to_schema(wide.reset_index(), MEASUREMENT_SCHEMA)


def diagnosis_features(rows: pd.DataFrame) -> pa.Table:
    """Charlson index, its categories and the number of codes; needs ALL codes of its stays."""
    if rows.empty:
        return DIAGNOSIS_SCHEMA.empty_table()
    flags = charlson.category_flags(rows["icd_code"], rows["icd_version"])
    flags.insert(0, "admission_id", rows["admission_id"].to_numpy())
    per_stay = flags.groupby("admission_id", sort=False).max()
    out = pd.DataFrame({
        "charlson_index": charlson.charlson_index(per_stay),
        "n_diagnoses": rows.groupby("admission_id", sort=False).size().reindex(per_stay.index),
    })  # fmt: skip
    for name in charlson.CATEGORIES:
        out[f"cci_{name}"] = per_stay[name]
    return _to_schema(out.reset_index(), DIAGNOSIS_SCHEMA)


_DEID = re.compile(r"\[\*\*[^\]]*\*\*\]")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def clean_note(text: str) -> str:
    """Whitespace and de-identification tags out; every word, negation cues included, stays."""
    text = _DEID.sub("___", text[:MAX_NOTE_CHARS])
    text = _SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n", text).strip()


def note_features(rows: pd.DataFrame) -> pa.Table:
    """The latest discharge summary of each stay, cleaned, and its concepts (`data.concepts`:
    symptoms, conditions and social facts with negation and experiencer); needs ALL notes of
    its stays. A stay without a summary gets no row: its concepts stay unknown."""
    if rows.empty:
        return NOTE_SCHEMA.empty_table()
    summaries = rows.loc[
        rows["category"].fillna("").str.strip().str.lower().eq(DISCHARGE_SUMMARY.lower())
        & rows["text"].notna()
    ]
    latest = (
        summaries.sort_values(["admission_id", "charttime"], kind="stable")
        .groupby("admission_id", sort=False)
        .tail(1)
    )
    texts = [clean_note(t) for t in latest["text"]]
    concepts = pd.DataFrame([note_concept_values(t) for t in texts], columns=list(NOTE_FEATURES))
    out = pd.concat(
        [pd.DataFrame({"admission_id": latest["admission_id"].to_numpy(), TEXT_COLUMN: texts}), concepts],
        axis=1,
    )
    return _to_schema(out, NOTE_SCHEMA)


DIAGNOSIS_COUNTS = ("n_diagnoses", "charlson_index")


def fill_absent(table: pd.DataFrame, diagnoses_known: np.ndarray | None = None) -> pd.DataFrame:
    """A stay without measurements has zero counts; a stay whose codes are known (every stay of
    a raw folder; a record that gives `diagnoses`) but has none has Charlson 0 and no flags.
    Codes not known (`diagnoses_known` False) stay NaN: unknown, not zero."""
    counts = [c for c in table.columns if c.endswith("_count")]
    table[counts] = table[counts].fillna(0)
    known = np.ones(len(table), bool) if diagnoses_known is None else np.asarray(diagnoses_known, bool)
    for column in [c for c in table.columns if c in DIAGNOSIS_COUNTS or c.startswith("cci_")]:
        fill = False if column.startswith("cci_") else 0
        filled = table[column].astype(object).where(table[column].notna(), fill)
        table[column] = filled.where(known, None)
    return table


# A chronic condition the note asserts counts in the Charlson index as a coded one does.
NOTE_CHARLSON = {
    "chf": "congestive_heart_failure", "copd": "chronic_pulmonary", "diabetes": "diabetes",
    "ckd": "renal", "cancer": "malignancy", "dementia": "dementia", "liver_disease": "mild_liver",
    "stroke": "cerebrovascular", "pad": "peripheral_vascular",
}  # fmt: skip
ALL_SOURCES = "charlson_all_sources"


def comorbidity_features(table: pd.DataFrame) -> pd.DataFrame:
    """`charlson_all_sources`: the Charlson index of the categories coded OR asserted in the
    note (claims miss conditions that the discharge summary states). Unknown only when
    neither the codes nor a note are known."""
    flags = pd.DataFrame(
        {name: table.get(f"cci_{name}", pd.Series(None, index=table.index)) for name in charlson.CATEGORIES},
        index=table.index,
    )
    codes_known = table["charlson_index"].notna() if "charlson_index" in table else False
    union = flags.astype(object).where(flags.notna(), False).astype(bool)
    note_known = pd.Series(False, index=table.index)
    for condition, category in NOTE_CHARLSON.items():
        column = f"note_{condition}"
        if column in table:
            union[category] |= table[column].astype(float).fillna(0).to_numpy() > 0
            note_known |= table[column].notna()
    index = charlson.charlson_index(union).astype("float64")
    table[ALL_SOURCES] = index.where(codes_known | note_known, np.nan)
    return table


def finalize(table: pd.DataFrame) -> pd.DataFrame:
    """Absent measurements and codes filled (`fill_absent`), integer types, the comorbidity
    index of all sources, the patient split."""
    table = comorbidity_features(fill_absent(table))
    counts = [c for c in table.columns if c.endswith("_count") or c in DIAGNOSIS_COUNTS]
    table[counts] = table[counts].astype(np.int32)
    flags = [c for c in table.columns if c.startswith("cci_")]
    table[flags] = table[flags].astype(bool)
    table[SPLIT_COLUMN] = split_of(table["patient_id"].to_numpy())
    return table


OUTPUT_SCHEMA = pa.schema(
    [
        *STAY_SCHEMA,
        *list(DIAGNOSIS_SCHEMA)[1:],
        *list(MEASUREMENT_SCHEMA)[1:],
        *list(NOTE_SCHEMA)[1:],
        (ALL_SOURCES, pa.float64()),
    ]
)
OUTPUT_ORDER = OUTPUT_SCHEMA.names


# --- Ray Data pipeline ------------------------------------------------------------------------


def _partitions(rows: int) -> int:
    """Shuffle partitions: a few per core for small data, ~200k rows each for large."""
    return int(min(128, max(4, math.ceil(rows / 200_000))))


KIND = "_kind"
PATIENT_COLUMNS = ["patient_id", "sex", "date_of_birth", "ethnicity"]
# One envelope per shuffle: every input table is padded with nulls to the same columns and
# tagged with its kind, so ONE hash shuffle co-locates all rows of a patient (or a stay).
# Each shuffle costs seconds of fixed overhead on Ray Data, whatever the data size.
PATIENT_ENVELOPE = pa.schema(
    [
        *[f.with_nullable(True) for f in TABLES["admissions"]],  # patient rows leave stay fields empty
        *[TABLES["patients"].field(c) for c in PATIENT_COLUMNS[1:]],
        (KIND, pa.string()),
    ]
)
STAY_ENVELOPE = pa.schema(
    [
        ("admission_id", pa.string()), (KIND, pa.string()), ("charttime", pa.timestamp("us")),
        ("item", pa.string()), ("value", pa.float64()), ("icd_code", pa.string()),
        ("icd_version", pa.int8()), ("category", pa.string()), ("text", pa.string()),
    ]
)  # fmt: skip
PER_STAY_SCHEMA = pa.schema([*MEASUREMENT_SCHEMA, *list(DIAGNOSIS_SCHEMA)[1:], *list(NOTE_SCHEMA)[1:]])


def _envelope(batch: pa.Table, schema: pa.Schema, kind: str) -> pa.Table:
    n = batch.num_rows
    columns = []
    for f in schema:
        if f.name == KIND:
            columns.append(pa.array([kind] * n, pa.string()))
        elif f.name in batch.column_names:
            columns.append(batch.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def patient_block(rows: pd.DataFrame) -> pa.Table:
    """Whole patients (their patient row and all their stays) -> stay features."""
    patients = rows.loc[rows[KIND] == "patients", PATIENT_COLUMNS]
    stays = rows.loc[rows[KIND] == "admissions", TABLES["admissions"].names]
    if stays.empty:
        return STAY_SCHEMA.empty_table()
    return stay_features(stays.merge(patients, on="patient_id", how="left"))


def stay_block(rows: pd.DataFrame) -> pa.Table:
    """Whole stays (all their measurements, codes and notes) -> one row of features each."""
    parts = [
        measurement_features(rows.loc[rows[KIND].isin(ITEM_RANGES)]).to_pandas(),
        diagnosis_features(rows.loc[rows[KIND] == "diagnoses"]).to_pandas(),
        note_features(rows.loc[rows[KIND] == "notes"]).to_pandas(),
    ]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part, on="admission_id", how="outer")
    return _to_schema(merged, PER_STAY_SCHEMA)


def build_features(
    raw: str, out: str, overwrite: bool = False, partitions: int | None = None
) -> dict[str, Any]:
    """Validate `raw`, build features with Ray Data and publish a feature folder at `out`.

    Three shuffles in all: patients+admissions by patient, labs+vitals+diagnoses+notes by
    stay, and the final join of the two on admission_id.
    """
    import ray

    started = time.perf_counter()
    report = validate_raw(raw)
    report.raise_if_failed()
    folder = resolve(raw)
    n = partitions or _partitions(max(report.rows.values()))

    def tagged(tables: list[str], schema: pa.Schema) -> Any:
        parts = [
            ray.data.read_parquet(
                table_files(folder, t),
                filesystem=folder.fs,
                columns=[c for c in schema.names if c in TABLES[t].names],
            ).map_batches(_envelope, batch_format="pyarrow", fn_args=(schema, t))
            for t in tables
            if report.rows.get(t)
        ]
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0] if parts else None

    def by_key(ds: Any, key: str, fn: Callable[[pd.DataFrame], pa.Table]) -> Any:
        """Hash-partition on `key` so each block holds whole groups, then apply `fn` per block."""
        return ds.repartition(n, keys=[key]).map_batches(fn, batch_size=None, batch_format="pandas")

    features = by_key(tagged(["patients", "admissions"], PATIENT_ENVELOPE), "patient_id", patient_block)
    per_stay = tagged(["labs", "vitals", "diagnoses", "notes"], STAY_ENVELOPE)
    if per_stay is not None:
        per_stay = by_key(per_stay, "admission_id", stay_block)
        features = features.join(per_stay, join_type="left_outer", num_partitions=n, on=("admission_id",))

    def complete(batch: pd.DataFrame) -> pa.Table:
        for name in OUTPUT_ORDER:
            if name not in batch.columns:  # no labs, codes or notes at all in this source
                batch[name] = None
        return _to_schema(finalize(batch), OUTPUT_SCHEMA.append(pa.field(SPLIT_COLUMN, pa.string())))

    features = features.map_batches(complete, batch_format="pandas")
    target = resolve(out)
    spec = feature_spec(raw)
    with staged_output(target, overwrite) as staging:
        features.write_parquet(staging.path, filesystem=staging.fs, partition_cols=[SPLIT_COLUMN])
        manifest = _finish(staging, spec, started)
    log.info("features %s -> %s in %.1fs", folder.uri, target.uri, manifest["build_seconds"])
    return manifest


def feature_spec(raw: str) -> FeatureSpec:
    return FeatureSpec(
        source={"kind": "raw-ehr", "path": str(raw)},
        id_columns=ID_COLUMNS,
        text_column=TEXT_COLUMN,
        fractions=DEFAULT_FRACTIONS,
        extra={"label_definition": f"readmitted within {READMISSION_DAYS} days of discharge"},
    )


def _finish(staging: Location, spec: FeatureSpec, started: float) -> dict[str, Any]:
    hive_to_split_dirs(staging)
    spec.extra["build_seconds"] = round(time.perf_counter() - started, 2)
    return write_manifest(staging, spec)


# --- single-process reference (tests and benchmark baseline) -----------------------------------


def compute_features_pandas(raw: str) -> pd.DataFrame:
    """The same transforms on whole tables in one process, no Ray: reference and baseline."""
    report = validate_raw(raw)
    report.raise_if_failed()
    folder = resolve(raw)

    def read(table: str, columns: list[str]) -> pd.DataFrame:
        files = table_files(folder, table)
        if not files:  # optional table (notes) absent
            return pd.DataFrame(columns=columns)
        return pads.dataset(files, filesystem=folder.fs).to_table(columns=columns).to_pandas()

    patients = read("patients", ["patient_id", "sex", "date_of_birth", "ethnicity"])
    stays = read("admissions", list(TABLES["admissions"].names)).merge(patients, on="patient_id", how="left")
    features = stay_features(stays).to_pandas()
    measured = pd.concat([read(t, ["admission_id", "charttime", "item", "value"]) for t in ITEM_RANGES])
    parts = [
        measurement_features(measured),
        diagnosis_features(read("diagnoses", list(TABLES["diagnoses"].names))),
        note_features(read("notes", ["admission_id", "charttime", "category", "text"])),
    ]
    for part in parts:
        features = features.merge(part.to_pandas(), on="admission_id", how="left")
    return finalize(features)[[*OUTPUT_ORDER, SPLIT_COLUMN]]
