"""Raw EHR folder -> feature folder, with Ray Data from read to write.

Every transform is a pure pandas function over a *complete* group of rows (all rows of some
admissions, or all stays of some patients); `chunk_features` applies them all to whole
patients. A raw folder written in patient parts (`data synth` does; see
`data.raw.write_raw_manifest`) streams with no shuffle: one Ray task per part reads it,
computes and writes, so memory stays bounded by a few parts. Any other folder is shuffled once,
on the patient, into blocks of whole patients. `compute_features_pandas` applies the very same
`chunk_features` to whole tables in one process: the reference the tests compare against and
the benchmark's baseline.

One output row per admission that can be readmitted (stays ending in death or hospice are
dropped). The label is 1 when the same patient is admitted again within 30 days of discharge.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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
from data.raw import PARTITION_KEY, part_file, table_files
from data.schema import (
    DISCHARGE_SUMMARY,
    ITEM_RANGES,
    LAB_RANGES,
    TABLES,
    TERMINAL_DISPOSITIONS,
    VITAL_RANGES,
)
from data.storage import MANIFEST_NAME, Location, resolve, staged_output
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


# --- one chunk of whole patients -> feature rows (every path ends here) -----------------------

# What each transform reads of each table.
CHUNK_COLUMNS: dict[str, list[str]] = {
    "patients": ["patient_id", "sex", "date_of_birth", "ethnicity"],
    "admissions": list(TABLES["admissions"].names),
    "labs": ["admission_id", "charttime", "item", "value"],
    "vitals": ["admission_id", "charttime", "item", "value"],
    "diagnoses": list(TABLES["diagnoses"].names),
    "notes": ["admission_id", "charttime", "category", "text"],
}
FEATURE_SCHEMA = OUTPUT_SCHEMA.append(pa.field(SPLIT_COLUMN, pa.string()))
STAY_TABLES = ("labs", "vitals", "diagnoses", "notes")  # rows of a stay, keyed by admission_id


def empty_table(table: str) -> pd.DataFrame:
    """A table with no rows but its schema's columns and types."""
    return TABLES[table].empty_table().select(CHUNK_COLUMNS[table]).to_pandas()


def chunk_features(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Feature rows of whole patients: `tables` holds, for some set of patients, all their rows
    of every raw table (`CHUNK_COLUMNS`; a missing table counts as empty). The pandas reference
    passes every patient at once; the Ray pipeline one chunk per task."""

    def get(table: str) -> pd.DataFrame:
        frame = tables.get(table)
        return empty_table(table) if frame is None else frame

    stays = get("admissions")
    if stays.empty:
        return FEATURE_SCHEMA.empty_table().to_pandas()
    features = stay_features(stays.merge(get("patients"), on="patient_id", how="left")).to_pandas()
    measured = pd.concat([get(t) for t in ITEM_RANGES], ignore_index=True)
    for part in (
        measurement_features(measured),
        diagnosis_features(get("diagnoses")),
        note_features(get("notes")),
    ):
        features = features.merge(part.to_pandas(), on="admission_id", how="left")
    return finalize(features)[FEATURE_SCHEMA.names]


# --- Ray Data pipeline ------------------------------------------------------------------------


class PartitioningError(ValueError):
    """A raw folder's manifest claims patient-partitioned parts that its files contradict."""


def patient_parts(folder: Location) -> int | None:
    """N when the raw manifest claims `part-k` (k < N) of every table holds whole patients
    (`data.raw.write_raw_manifest`), and the file names agree; None when there is no claim."""
    manifest_file = folder.child(MANIFEST_NAME)
    if not manifest_file.exists():
        return None
    claim = json.loads(manifest_file.read_text()).get("partitioning") or {}
    if claim.get("key") != PARTITION_KEY:
        return None
    parts = int(claim["parts"])
    expected = {part_file(k) for k in range(parts)}
    for table in CHUNK_COLUMNS:
        for path in table_files(folder, table):
            name = path.rsplit("/", 1)[-1]
            if name not in expected or path.rsplit("/", 2)[-2] != table:
                raise PartitioningError(
                    f"{folder.uri}: the manifest claims {parts} patient parts, but {table} has the "
                    f"file {name!r}, which is not one of {part_file(0)} .. {part_file(parts - 1)}"
                )
    return parts


def read_part(folder: Location, part: int | None) -> dict[str, pd.DataFrame]:
    """Part `part` of every table, after checking that it holds whole patients: every stay's
    patient and every child row's stay are in the same part (the dangling-key check of
    `validate_raw` ran over the whole folder first). `None`: every table whole."""
    tables: dict[str, pd.DataFrame] = {}
    for table, columns in CHUNK_COLUMNS.items():
        if part is None:
            files = table_files(folder, table)
        else:
            path = folder.child(table, part_file(part))
            files = [path.path] if path.is_file() else []
        if files:
            data = pads.dataset(files, filesystem=folder.fs).to_table(columns=columns)
            tables[table] = data.to_pandas()
    if part is None:
        return tables
    checks = [("admissions", "patient_id", "patients")] + [
        (child, "admission_id", "admissions") for child in STAY_TABLES
    ]
    for child, key, parent in checks:
        if child not in tables:
            continue
        known = tables[parent][key] if parent in tables else pd.Series([], dtype=object)
        stray = int((~tables[child][key].isin(known)).sum())
        if stray:
            raise PartitioningError(
                f"{folder.child(child, part_file(part)).uri}: {stray} row(s) whose {key} is "
                f"not in {parent}/{part_file(part)}; the manifest's patient partitioning is wrong "
                "(remove its 'partitioning' entry to have the pipeline shuffle instead)"
            )
    return tables


def patient_slice(tables: dict[str, pd.DataFrame], index: int, slices: int) -> dict[str, pd.DataFrame]:
    """The rows of one in `slices` of the patients (by a fixed hash of the id), all tables."""
    if slices == 1:
        return tables
    patients = tables["patients"]["patient_id"]
    keep = set(patients[pd.util.hash_array(patients.to_numpy(object)) % slices == index])
    out = {"patients": tables["patients"].loc[patients.isin(keep)]}
    if "admissions" in tables:
        out["admissions"] = tables["admissions"].loc[tables["admissions"]["patient_id"].isin(keep)]
        stays = set(out["admissions"]["admission_id"])
        for child in STAY_TABLES:
            if child in tables:
                out[child] = tables[child].loc[tables[child]["admission_id"].isin(stays)]
    return out


def part_block(batch: pa.Table, folder: Location, parts: int | None, slices: int) -> pa.Table:
    """Ray Data map: task numbers -> feature rows of their slice of their part (`parts` None: of
    the whole folder), read and computed in place; a part split in `slices` tasks keeps every
    core busy on small inputs."""
    frames = [
        chunk_features(
            patient_slice(read_part(folder, None if parts is None else task // slices), task % slices, slices)
        )
        for task in batch.column("id").to_pylist()
    ]
    return pa.concat_tables(_to_schema(frame, FEATURE_SCHEMA) for frame in frames)


KIND = "_kind"
PATIENT_KEY = "_patient"


def _envelope_schema() -> pa.Schema:
    """Every table's pipeline columns in one nullable schema, plus its kind and its patient: ONE
    hash shuffle on the patient then co-locates all rows of a patient."""
    fields: dict[str, pa.Field] = {}
    for table, columns in CHUNK_COLUMNS.items():
        for column in columns:
            fields.setdefault(column, TABLES[table].field(column).with_nullable(True).remove_metadata())
    return pa.schema([*fields.values(), (KIND, pa.string()), (PATIENT_KEY, pa.string())])


ENVELOPE = _envelope_schema()


def envelope(batch: pa.Table, kind: str, stays: pa.Table | None = None) -> pa.Table:
    """One table's rows in the shared envelope; child rows find their patient through `stays`
    (admission_id -> patient_id of the whole folder)."""
    n = batch.num_rows
    if "patient_id" in batch.column_names:
        patient = batch.column("patient_id").cast(pa.string())
    else:
        assert stays is not None
        index = pc.index_in(batch.column("admission_id").cast(pa.string()), value_set=stays.column(0))
        patient = pc.take(stays.column(1), index)
    columns = []
    for f in ENVELOPE:
        if f.name == KIND:
            columns.append(pa.array([kind] * n, pa.string()))
        elif f.name == PATIENT_KEY:
            columns.append(patient)
        elif f.name in batch.column_names:
            columns.append(batch.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=ENVELOPE)


def shuffled_block(rows: pa.Table) -> pa.Table:
    """Ray Data map after the shuffle: whole patients, every table -> their feature rows."""
    kinds = rows.column(KIND)
    tables = {
        table: rows.filter(pc.equal(kinds, table)).select(columns).to_pandas()
        for table, columns in CHUNK_COLUMNS.items()
    }
    return _to_schema(chunk_features(tables), FEATURE_SCHEMA)


# A folder without patient parts but at most this many rows in all (about 30k stays of the
# synthetic data) is read whole by each task, which then keeps its slice of the patients: no
# shuffle. Larger ones are shuffled once.
WHOLE_FOLDER_ROWS = 1_000_000


def _partitions(rows: int) -> int:
    """Shuffle partitions: a few per core for small data, ~200k rows each for large."""
    return int(min(128, max(4, math.ceil(rows / 200_000))))


def build_features(
    raw: str, out: str, overwrite: bool = False, partitions: int | None = None, shuffle: bool = False
) -> dict[str, Any]:
    """Validate `raw`, build features with Ray Data and publish a feature folder at `out`.

    A raw folder whose manifest claims patient parts (what `data synth` writes) streams: one
    task per part reads it, computes its features and writes them, with no shuffle, so memory
    holds a few parts at a time. A small folder without parts (`WHOLE_FOLDER_ROWS`) is read
    whole by each task, which keeps its slice of the patients. Any other folder (or
    `shuffle=True`) is read table by table and shuffled once, on the patient, into
    `partitions` blocks of whole patients.
    """
    import ray

    started = time.perf_counter()
    report = validate_raw(raw)
    report.raise_if_failed()
    folder = resolve(raw)
    target = resolve(out)
    spec = feature_spec(raw)
    context = ray.data.DataContext.get_current()
    wrap_errors = context.raise_original_map_exception
    # A task's PartitioningError itself, not Ray Data's generic wrapper (set before the dataset
    # is made: a dataset keeps the context it was made in).
    context.raise_original_map_exception = True
    try:
        features, spec.extra["pipeline"] = _feature_dataset(folder, report.rows, shuffle, partitions)
        with staged_output(target, overwrite) as staging:
            try:
                features.write_parquet(staging.path, filesystem=staging.fs, partition_cols=[SPLIT_COLUMN])
            except Exception as err:
                cause = _partitioning_cause(err)
                if cause is None:
                    raise
                raise PartitioningError(str(cause)) from None
            manifest = _finish(staging, spec, started)
    finally:
        context.raise_original_map_exception = wrap_errors
    log.info("features %s -> %s in %.1fs", folder.uri, target.uri, manifest["build_seconds"])
    return manifest


def _feature_dataset(
    folder: Location, rows: dict[str, int], shuffle: bool, partitions: int | None
) -> tuple[Any, str]:
    """The Ray Dataset of feature rows, and which of the three plans it follows."""
    import ray

    parts = None if shuffle else patient_parts(folder)
    if parts is not None or (not shuffle and sum(rows.values()) <= WHOLE_FOLDER_ROWS):
        slices = max(1, math.ceil(2 * int(ray.cluster_resources().get("CPU", 1)) / (parts or 1)))
        tasks = (parts or 1) * slices
        features = ray.data.range(tasks, override_num_blocks=tasks).map_batches(
            part_block, batch_size=1, batch_format="pyarrow", fn_args=(folder, parts, slices)
        )
        return features, "patient parts, no shuffle" if parts else "whole folder in patient slices"
    n = partitions or _partitions(max(rows.values()))
    stays = (
        pads.dataset(table_files(folder, "admissions"), filesystem=folder.fs)
        .to_table(columns=["admission_id", "patient_id"])
        .cast(pa.schema([("admission_id", pa.string()), ("patient_id", pa.string())]))
    )
    stays_ref = ray.put(stays)
    tables = [
        ray.data.read_parquet(table_files(folder, t), filesystem=folder.fs, columns=columns).map_batches(
            _enveloped, batch_format="pyarrow", fn_args=(t, stays_ref)
        )
        for t, columns in CHUNK_COLUMNS.items()
        if rows.get(t)
    ]
    union = tables[0].union(*tables[1:]) if len(tables) > 1 else tables[0]
    features = union.repartition(n, keys=[PATIENT_KEY]).map_batches(
        shuffled_block, batch_size=None, batch_format="pyarrow"
    )
    return features, "one shuffle on the patient"


def _partitioning_cause(err: BaseException | None) -> PartitioningError | None:
    """The PartitioningError a Ray task raised, unwrapped (Ray's wrapper's text is a traceback)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None) or err.__cause__
        if isinstance(err, PartitioningError) and not isinstance(inner, PartitioningError):
            return err
        err = inner
    return None


def _enveloped(batch: pa.Table, kind: str, stays: Any) -> pa.Table:
    import ray

    table = stays if isinstance(stays, pa.Table) else ray.get(stays)
    return envelope(batch, kind, table)


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
    tables = {
        table: pads.dataset(files, filesystem=folder.fs).to_table(columns=columns).to_pandas()
        for table, columns in CHUNK_COLUMNS.items()
        if (files := table_files(folder, table))
    }
    return chunk_features(tables)
