"""MIMIC-III (v1.4) CSV export -> a MediScale raw EHR folder (see data.schema.TABLES).

Written against the PhysioNet demo, but full MIMIC-III has the same layout (upper-case file
names, lower-case columns; `.csv` or `.csv.gz`), so the same call converts the full database.
The large event tables (LABEVENTS, CHARTEVENTS: 330M rows, NOTEEVENTS) are streamed in chunks
with only the needed columns and written part by part, so memory stays bounded; the small
tables are converted whole. Output is published atomically with its manifest last.

What is kept and what is dropped:

* patients: PATIENTS (gender -> sex M/F/U, dob, dod); ethnicity is the one on the patient's
  first admission (ADMISSIONS), since PATIENTS has none.
* admissions: ADMISSIONS; `discharge_location` is mapped to HOME, HOME_HEALTH, SNF, REHAB,
  AMA, HOSPICE, DIED or OTHER (hospital_expire_flag = 1 always means DIED).
* diagnoses: DIAGNOSES_ICD with ICD-9 codes; rows without a code are dropped.
* labs: LABEVENTS rows whose itemid is one of the blood chemistry/hematology items in
  LAB_ITEMIDS, with a numeric value and an admission; all other lab items are dropped.
  MIMIC-III has no plain BNP item, only NT-proBNP (50963), a different assay whose values
  run several times higher, so it is dropped rather than passed off as `bnp`.
* vitals: CHARTEVENTS rows of the CareVue and MetaVision items in VITAL_ITEMIDS (Fahrenheit
  converted to Celsius), with a numeric value, an admission and no error flag.
* notes: NOTEEVENTS with an admission and not flagged as an error (charttime, else chartdate).
  Note text is never logged.
* Everything else (ICU stays, prescriptions, procedures, transfers, ...) is not imported.
  Absent event files (the demo has no LABEVENTS/CHARTEVENTS and a header-only NOTEEVENTS)
  give empty tables with the right schema.

Times stay in MIMIC's shifted calendar (years 2100-2200); dates of birth of patients over 89
are shifted further back, which is why timestamps are parsed by pyarrow, not pandas (ns).
The 30-day readmission label is not made here: the feature pipeline derives it later from
the admissions table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data.raw import to_raw_table, write_part, write_raw_manifest
from data.schema import LAB_RANGES, TABLES
from data.storage import resolve, staged_output

log = logging.getLogger(__name__)

# Normalised lab name -> MIMIC-III LABEVENTS itemid and its D_LABITEMS label (blood specimens).
LAB_ITEMIDS: dict[int, tuple[str, str]] = {
    50912: ("creatinine", "Creatinine"),
    51006: ("bun", "Urea Nitrogen"),
    50983: ("sodium", "Sodium"),
    50971: ("potassium", "Potassium"),
    50931: ("glucose", "Glucose"),
    51222: ("hemoglobin", "Hemoglobin"),
    51301: ("wbc", "White Blood Cells"),
    50862: ("albumin", "Albumin"),
    50813: ("lactate", "Lactate"),
}

# CHARTEVENTS itemid -> normalised vital name (CareVue ids < 220000, MetaVision ids >= 220000).
VITAL_ITEMIDS: dict[int, str] = {
    **dict.fromkeys((211, 220045), "heart_rate"),
    **dict.fromkeys((51, 442, 455, 6701, 220179, 220050), "sbp"),
    **dict.fromkeys((8368, 8440, 8441, 8555, 220180, 220051), "dbp"),
    **dict.fromkeys((618, 615, 220210, 224690), "resp_rate"),
    **dict.fromkeys((223762, 676, 223761, 678), "temperature"),
    **dict.fromkeys((646, 220277), "spo2"),
}
FAHRENHEIT_ITEMIDS = frozenset({223761, 678})

DISCHARGE_MAP = {
    "HOME": "HOME",
    "HOME HEALTH CARE": "HOME_HEALTH",
    "HOME WITH HOME IV PROVIDR": "HOME_HEALTH",
    "SNF": "SNF",
    "SNF-MEDICAID ONLY CERTIF": "SNF",
    "ICF": "SNF",  # intermediate care (nursing) facility
    "LONG TERM CARE HOSPITAL": "SNF",  # post-acute institutional care, like a SNF
    "REHAB/DISTINCT PART HOSP": "REHAB",
    "LEFT AGAINST MEDICAL ADVI": "AMA",
    "HOSPICE-HOME": "HOSPICE",
    "HOSPICE-MEDICAL FACILITY": "HOSPICE",
    "DEAD/EXPIRED": "DIED",
    # Transfers to another acute, psychiatric, cancer or federal hospital, and the rest.
    "SHORT TERM HOSPITAL": "OTHER",
}

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
EVENT_CHUNK_ROWS = 2_000_000
NOTE_CHUNK_ROWS = 50_000
PART_ROWS = 2_000_000


def find_table(src: str, name: str) -> str | None:
    """Path of MIMIC table `name` (e.g. "ADMISSIONS") in `src`: .csv or .csv.gz, any case."""
    for base in (name.upper(), name.lower()):
        for ext in (".csv", ".csv.gz"):
            path = os.path.join(src, base + ext)
            if os.path.isfile(path):
                return path
    return None


def _require_table(src: str, name: str) -> str:
    path = find_table(src, name)
    if path is None:
        raise FileNotFoundError(f"{src}: no {name}.csv (or .csv.gz); is this a MIMIC-III folder?")
    return path


def _check_header(path: str, needed: list[str]) -> None:
    header = pd.read_csv(path, nrows=0).columns.str.lower()
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")


def _read(path: str, columns: list[str], dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    _check_header(path, columns)
    frame = pd.read_csv(path, usecols=lambda c: c.lower() in columns, dtype=dtype or str)
    frame.columns = frame.columns.str.lower()
    return frame


def _chunks(path: str, columns: list[str], dtype: dict[str, Any], rows: int) -> Iterator[pd.DataFrame]:
    _check_header(path, columns)
    reader = pd.read_csv(
        path, usecols=lambda c: c.lower() in columns, dtype=dtype, chunksize=rows, low_memory=False
    )
    for chunk in reader:
        chunk.columns = chunk.columns.str.lower()
        yield chunk


def to_timestamps(values: pd.Series, where: str) -> pa.Array:
    """MIMIC 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD' text -> timestamp[us] (any year)."""
    text = values.astype("string").str.strip()
    text = text.where(text.str.len() != 10, text + " 00:00:00")
    array = pa.array(text.astype(object).where(text.notna(), None), type=pa.string())
    try:
        return pc.strptime(array, format=TS_FORMAT, unit="us")
    except pa.ArrowInvalid as err:
        raise ValueError(f"{where}: unparseable timestamp: {err}") from err


def _text(values: pd.Series) -> pa.Array:
    """Text column with nulls for missing and surrounding whitespace removed."""
    text = values.astype("string").str.strip()
    return pa.array(text.astype(object).where(text.notna(), None).tolist(), pa.string())


def _ids(values: pd.Series) -> pd.Series:
    """Numeric MIMIC ids (possibly read as float) -> text keys like '142345'."""
    return pd.to_numeric(values, errors="raise").astype("int64").astype(str)


def map_discharge(location: pd.Series, expired: pd.Series) -> pd.Series:
    """MIMIC discharge_location -> schema disposition; in-hospital death always wins."""
    text = location.astype("string").str.strip().str.upper()
    mapped = text.map(lambda v: None if pd.isna(v) else DISCHARGE_MAP.get(v, "OTHER"))
    died = pd.to_numeric(expired, errors="coerce").fillna(0).astype(int) == 1
    return mapped.where(~died, "DIED").astype(object)


def read_admissions(path: str) -> tuple[pa.Table, pd.Series]:
    """The admissions table, plus each patient's ethnicity on their first admission."""
    cols = [
        "subject_id",
        "hadm_id",
        "admittime",
        "dischtime",
        "admission_type",
        "discharge_location",
        "insurance",
        "ethnicity",
        "edregtime",
        "hospital_expire_flag",
    ]
    adm = _read(path, cols)
    admit = to_timestamps(adm["admittime"], f"{path} admittime")
    discharge = to_timestamps(adm["dischtime"], f"{path} dischtime")
    if admit.null_count or discharge.null_count:
        raise ValueError(f"{path}: admittime/dischtime missing on some rows")
    patient_id = _ids(adm["subject_id"])
    table = pa.table(
        {
            "admission_id": pa.array(_ids(adm["hadm_id"]).tolist(), pa.string()),
            "patient_id": pa.array(patient_id.tolist(), pa.string()),
            "admit_time": admit,
            "discharge_time": discharge,
            "admission_type": _text(adm["admission_type"].str.upper()),
            "via_emergency_department": pa.array(adm["edregtime"].notna().tolist(), pa.bool_()),
            "discharge_disposition": _text(
                map_discharge(adm["discharge_location"], adm["hospital_expire_flag"])
            ),
            "insurance": _text(adm["insurance"]),
        }
    )
    order = pd.DataFrame(
        {
            "patient_id": patient_id,
            "t": admit.to_numpy(zero_copy_only=False),
            "ethnicity": adm["ethnicity"],
        }
    )
    first = order.sort_values(["patient_id", "t"], kind="stable").drop_duplicates("patient_id")
    return to_raw_table(table, "admissions"), first.set_index("patient_id")["ethnicity"]


def read_patients(path: str, ethnicity: pd.Series) -> pa.Table:
    pat = _read(path, ["subject_id", "gender", "dob", "dod"])
    patient_id = _ids(pat["subject_id"])
    sex = pat["gender"].astype("string").str.strip().str.upper()
    sex = sex.where(sex.isin(["M", "F"]), "U")
    dob = to_timestamps(pat["dob"].str.slice(0, 10), f"{path} dob").cast(pa.date32())
    dod = to_timestamps(pat["dod"].str.slice(0, 10), f"{path} dod").cast(pa.date32())
    table = pa.table(
        {
            "patient_id": pa.array(patient_id.tolist(), pa.string()),
            "sex": _text(sex),
            "date_of_birth": dob,
            "ethnicity": _text(patient_id.map(ethnicity)),
            "date_of_death": dod,
        }
    )
    return to_raw_table(table, "patients")


def read_diagnoses(path: str) -> pa.Table:
    dia = _read(path, ["hadm_id", "seq_num", "icd9_code"])
    dia = dia[dia["icd9_code"].notna() & dia["hadm_id"].notna()]
    code = dia["icd9_code"].str.strip().str.replace(".", "", regex=False)
    frame = pd.DataFrame(
        {
            "admission_id": _ids(dia["hadm_id"]),
            "icd_code": code,
            "icd_version": 9,
            "seq_num": pd.to_numeric(dia["seq_num"], errors="coerce").astype("Int16"),
        }
    )
    return to_raw_table(frame, "diagnoses")


def _event_frame(chunk: pd.DataFrame, where: str) -> dict[str, pa.Array]:
    return {
        "admission_id": pa.array(_ids(chunk["hadm_id"]).tolist(), pa.string()),
        "charttime": to_timestamps(chunk["charttime"], where),
    }


def check_lab_items(src: str) -> None:
    """Warn when D_LABITEMS names an itemid differently from what LAB_ITEMIDS assumes."""
    path = find_table(src, "D_LABITEMS")
    if path is None:
        return
    items = _read(path, ["itemid", "label"])
    labels = dict(zip(pd.to_numeric(items["itemid"]), items["label"].fillna(""), strict=True))
    for itemid, (name, label) in LAB_ITEMIDS.items():
        if labels.get(itemid, "").strip().lower() != label.lower():
            log.warning(
                "%s: itemid %d is %r, expected %r for %s",
                path,
                itemid,
                labels.get(itemid),
                label,
                name,
            )


def iter_labs(path: str) -> Iterator[pa.Table]:
    """LABEVENTS chunks reduced to the mapped items, as `labs` tables."""
    dtype = {"hadm_id": "float64", "itemid": "int64", "charttime": str, "valuenum": "float64"}
    for chunk in _chunks(path, list(dtype), dtype, EVENT_CHUNK_ROWS):
        chunk = chunk[chunk["itemid"].isin(LAB_ITEMIDS.keys())]
        chunk = chunk[chunk["hadm_id"].notna() & chunk["valuenum"].notna()]
        if chunk.empty:
            continue
        names = chunk["itemid"].map(lambda i: LAB_ITEMIDS[i][0])
        yield to_raw_table(
            pa.table(
                {
                    **_event_frame(chunk, f"{path} charttime"),
                    "item": pa.array(names.tolist(), pa.string()),
                    "value": pa.array(chunk["valuenum"].to_numpy(), pa.float64()),
                    "unit": pa.array(names.map(lambda n: LAB_RANGES[n].unit).tolist(), pa.string()),
                }
            ),
            "labs",
        )


def iter_vitals(path: str) -> Iterator[pa.Table]:
    """CHARTEVENTS chunks reduced to the vital items (Celsius), as `vitals` tables."""
    dtype = {
        "hadm_id": "float64",
        "itemid": "int64",
        "charttime": str,
        "valuenum": "float64",
        "error": "float64",
    }
    header = pd.read_csv(path, nrows=0).columns.str.lower()
    if "error" not in header:  # older exports lack the MetaVision error flag
        dtype.pop("error")
    for chunk in _chunks(path, list(dtype), dtype, EVENT_CHUNK_ROWS):
        keep = chunk["itemid"].isin(VITAL_ITEMIDS.keys())
        keep &= chunk["hadm_id"].notna() & chunk["valuenum"].notna()
        if "error" in chunk:
            keep &= chunk["error"].fillna(0) != 1
        chunk = chunk[keep]
        if chunk.empty:
            continue
        value = chunk["valuenum"].where(
            ~chunk["itemid"].isin(FAHRENHEIT_ITEMIDS), (chunk["valuenum"] - 32.0) * 5.0 / 9.0
        )
        yield to_raw_table(
            pa.table(
                {
                    **_event_frame(chunk, f"{path} charttime"),
                    "item": pa.array(chunk["itemid"].map(VITAL_ITEMIDS).tolist(), pa.string()),
                    "value": pa.array(value.to_numpy(), pa.float64()),
                }
            ),
            "vitals",
        )


def iter_notes(path: str) -> Iterator[pa.Table]:
    """NOTEEVENTS chunks with an admission and no error flag, as `notes` tables."""
    dtype = {
        "hadm_id": "float64",
        "chartdate": str,
        "charttime": str,
        "category": str,
        "text": str,
        "iserror": str,
    }
    for chunk in _chunks(path, list(dtype), dtype, NOTE_CHUNK_ROWS):
        keep = chunk["hadm_id"].notna() & chunk["text"].notna()
        keep &= chunk["iserror"].fillna("").str.strip() != "1"
        chunk = chunk[keep]
        if chunk.empty:
            continue
        when = chunk["charttime"].where(chunk["charttime"].notna(), chunk["chartdate"])
        yield to_raw_table(
            pa.table(
                {
                    "admission_id": pa.array(_ids(chunk["hadm_id"]).tolist(), pa.string()),
                    "charttime": to_timestamps(when, f"{path} charttime/chartdate"),
                    "category": _text(chunk["category"]),
                    "text": pa.array(chunk["text"].tolist(), pa.string()),
                }
            ),
            "notes",
        )


def _batched(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Merge small filtered chunks into parts of about `rows` rows."""
    pending: list[pa.Table] = []
    size = 0
    for table in tables:
        pending.append(table)
        size += table.num_rows
        if size >= rows:
            yield pa.concat_tables(pending)
            pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending)


def import_mimic3(src: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Convert the MIMIC-III CSV folder `src` to a raw EHR folder at `out`; returns its manifest."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: not a folder (expected the MIMIC-III CSV folder)")
    adm_path = _require_table(src, "ADMISSIONS")
    pat_path = _require_table(src, "PATIENTS")
    dia_path = _require_table(src, "DIAGNOSES_ICD")

    admissions, ethnicity = read_admissions(adm_path)
    small = {
        "patients": read_patients(pat_path, ethnicity),
        "admissions": admissions,
        "diagnoses": read_diagnoses(dia_path),
    }
    check_lab_items(src)
    readers = {
        "labs": ("LABEVENTS", iter_labs),
        "vitals": ("CHARTEVENTS", iter_vitals),
        "notes": ("NOTEEVENTS", iter_notes),
    }
    used = {
        name: path
        for name, path in [
            ("patients", pat_path),
            ("admissions", adm_path),
            ("diagnoses", dia_path),
        ]
    }
    absent: list[str] = []

    target = resolve(out)
    rows: dict[str, int] = {}
    with staged_output(target, overwrite) as staging:
        for name, table in small.items():
            write_part(staging, name, table, 0)
            rows[name] = table.num_rows
        for name, (mimic_name, reader) in readers.items():
            path = find_table(src, mimic_name)
            parts: Iterator[pa.Table] = iter(())
            if path is None:
                absent.append(mimic_name)
            else:
                used[name] = path
                parts = _batched(reader(path), PART_ROWS)
            rows[name] = 0
            count = 0
            for count, part in enumerate(parts, start=1):
                write_part(staging, name, part, count - 1)
                rows[name] += part.num_rows
            if count == 0:  # the table must exist even when nothing was there
                write_part(staging, name, TABLES[name].empty_table(), 0)
            log.info("mimic3: %s -> %d rows", name, rows[name])
        source = {"kind": "mimic3", "path": src, "files": used, "absent": absent}
        manifest = write_raw_manifest(staging, source, rows)
    if absent:
        log.info("mimic3: %s not in %s; their tables are empty", ", ".join(absent), src)
    log.info("wrote raw EHR folder %s: %s", target.uri, manifest["tables"])
    return manifest
