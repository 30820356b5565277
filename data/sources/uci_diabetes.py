"""UCI "Diabetes 130-US hospitals 1999-2008" (Strack et al. 2014) -> a MediScale feature folder.

The file is already one row per encounter with pre-aggregated columns, so it skips the raw EHR
layout and goes straight to features. What this module decides, and why:

* `?` (and empty cells) are missing; "None" in A1Cresult/max_glu_serum is a real category
  (test not done), so the CSV is read without pandas' default NA strings.
* Encounters ending in death or hospice (discharge_disposition_id 11, 13, 14, 19, 20, 21)
  cannot be readmitted, so they are dropped, as in the literature.
* The label is `readmitted == "<30"`; `readmitted` itself never becomes a feature.
* `prior_encounters` counts the patient's EARLIER encounters in the file (encounter_id
  increases over time), including dropped death/hospice ones. It never looks at later
  encounters or at any label, so it is not leakage.
* A text column that is missing on every row is dropped (with a warning) before writing:
  parquet cannot type it and it carries nothing.
* Only local files are read (zip, CSV, or a folder holding either); the output may be s3://.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
import pandas as pd

from data.featureset import LABEL, FeatureSpec, write_feature_frame

log = logging.getLogger(__name__)

DATA_FILE = "diabetic_data.csv"
MAPPING_FILE = "IDs_mapping.csv"

# Dispositions meaning death or hospice: no readmission possible, so no label.
TERMINAL_DISPOSITION_IDS = frozenset({11, 13, 14, 19, 20, 21})

NUMERIC_COLUMNS = (
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
)
MEDICATION_COLUMNS = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
PLAIN_CATEGORICAL_COLUMNS = (
    "race",
    "gender",
    "payer_code",
    "medical_specialty",
    "A1Cresult",
    "max_glu_serum",
    "change",
    "diabetesMed",
    *MEDICATION_COLUMNS,
)
# Raw id column -> output feature name; values become text descriptions from IDs_mapping.csv.
ID_COLUMNS = {
    "admission_type_id": "admission_type",
    "discharge_disposition_id": "discharge_disposition",
    "admission_source_id": "admission_source",
}
DIAG_COLUMNS = ("diag_1", "diag_2", "diag_3")
REQUIRED_COLUMNS = (
    "encounter_id",
    "patient_nbr",
    "age",
    "readmitted",
    *NUMERIC_COLUMNS,
    *PLAIN_CATEGORICAL_COLUMNS,
    *ID_COLUMNS,
    *DIAG_COLUMNS,
)
# Descriptions that mean "no value" in IDs_mapping.csv.
NULL_DESCRIPTIONS = frozenset({"NULL", ""})
MISSING_MARKERS = ("?", "")

IdMapping = dict[str, dict[str, str | None]]


def _check_columns(frame: pd.DataFrame, where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing required column(s) {missing}")


def _as_text(values: pd.Series) -> pd.Series:
    """Plain Python strings with None for missing, the type feature folders expect."""
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: v if v is None else str(v).strip())
    return text.where(~text.isin(MISSING_MARKERS), None).astype(object)


def _as_number(values: pd.Series) -> pd.Series:
    """int64 when complete, float64 (NaN for missing) otherwise."""
    number = pd.to_numeric(_as_text(values), errors="coerce")
    if number.notna().all() and np.all(np.mod(number, 1) == 0):
        return number.astype(np.int64)
    return number.astype(np.float64)


def age_midpoint(values: pd.Series) -> pd.Series:
    """'[70-80)' -> 75.0; anything unparseable -> NaN."""
    bounds = _as_text(values).str.extract(r"^\[(\d+)\s*-\s*(\d+)\)$")
    low = pd.to_numeric(bounds[0], errors="coerce")
    high = pd.to_numeric(bounds[1], errors="coerce")
    return ((low + high) / 2).astype(np.float64)


def icd9_group(code: Any) -> str | None:
    """Strack et al. (2014) category of one ICD-9 code; None for missing, V/E codes -> other."""
    if code is None or (isinstance(code, float) and np.isnan(code)):
        return None
    text = str(code).strip()
    if text in MISSING_MARKERS:
        return None
    if text[0] in "VvEe":
        return "other"
    try:
        value = float(text)
    except ValueError:
        return "other"
    whole = int(value)
    if 390 <= whole <= 459 or whole == 785:
        return "circulatory"
    if 460 <= whole <= 519 or whole == 786:
        return "respiratory"
    if 520 <= whole <= 579 or whole == 787:
        return "digestive"
    if whole == 250:
        return "diabetes"
    if 800 <= whole <= 999:
        return "injury"
    if 710 <= whole <= 739:
        return "musculoskeletal"
    if 580 <= whole <= 629 or whole == 788:
        return "genitourinary"
    if 140 <= whole <= 239:
        return "neoplasms"
    return "other"


def _map_ids(values: pd.Series, mapping: dict[str, str | None] | None) -> pd.Series:
    """Numeric id -> description; unknown ids (or no mapping at all) keep the id as text."""
    ids = _as_text(values).map(lambda v: v if v is None else v.lstrip("0") or "0")
    if not mapping:
        return ids
    return ids.map(lambda v: v if v is None or v not in mapping else mapping[v]).astype(object)


def uci_features(raw: pd.DataFrame, id_mapping: IdMapping | None = None) -> pd.DataFrame:
    """Turn the raw `diabetic_data.csv` frame into one feature row per kept encounter.

    Pure (no I/O) so it can be tested on a handmade frame. `id_mapping` maps each raw id
    column (e.g. "admission_type_id") to {id text: description}; without it ids stay text.
    Returns admission_id, patient_id, label and the features; death/hospice stays are dropped.
    """
    _check_columns(raw, "input frame")
    id_mapping = id_mapping or {}
    encounter = _as_number(raw["encounter_id"])
    patient = _as_text(raw["patient_nbr"])
    if encounter.isna().any() or patient.isna().any():
        raise ValueError("input frame: encounter_id and patient_nbr must be present on every row")

    # Earlier encounters of the same patient, counted before any row is dropped.
    order = np.argsort(encounter.to_numpy(), kind="stable")
    prior = np.empty(len(raw), dtype=np.int64)
    prior[order] = patient.iloc[order].groupby(patient.iloc[order].to_numpy()).cumcount().to_numpy()

    out = pd.DataFrame(
        {
            "admission_id": encounter.astype(np.int64).astype(str).astype(object),
            "patient_id": patient,
            LABEL: (_as_text(raw["readmitted"]) == "<30").astype(np.int8),
            "age": age_midpoint(raw["age"]),
        },
        index=raw.index,
    )
    for column in NUMERIC_COLUMNS:
        out[column] = _as_number(raw[column])
    out["prior_encounters"] = prior
    for column in PLAIN_CATEGORICAL_COLUMNS:
        out[column] = _as_text(raw[column])
    out["gender"] = out["gender"].where(out["gender"] != "Unknown/Invalid", None)
    for column, name in ID_COLUMNS.items():
        out[name] = _map_ids(raw[column], id_mapping.get(column))
    for column in DIAG_COLUMNS:
        out[f"{column}_group"] = raw[column].map(icd9_group).astype(object)

    disposition = pd.to_numeric(_as_text(raw["discharge_disposition_id"]), errors="coerce")
    keep = ~disposition.isin(TERMINAL_DISPOSITION_IDS)
    out = out.loc[keep.to_numpy()].reset_index(drop=True)
    log.info(
        "uci-diabetes: kept %d of %d encounters (%d death/hospice dropped), label rate %.4f",
        len(out),
        len(raw),
        int((~keep).sum()),
        float(out[LABEL].mean()) if len(out) else float("nan"),
    )
    return out


def parse_id_mapping(lines: Iterable[str]) -> IdMapping:
    """Parse IDs_mapping.csv: three `<id column>,description` blocks separated by blank rows."""
    mapping: IdMapping = {}
    current: dict[str, str | None] | None = None
    for line in lines:
        row = line.strip()
        if not row or row == ",":
            current = None
            continue
        key, _, description = row.partition(",")
        key = key.strip()
        description = description.strip().strip('"').strip()
        if key in ID_COLUMNS:
            current = mapping.setdefault(key, {})
            continue
        if current is None or not key.isdigit():
            continue
        current[key.lstrip("0") or "0"] = None if description in NULL_DESCRIPTIONS else description
    return mapping


def _read_mapping(handle: IO[bytes]) -> IdMapping:
    return parse_id_mapping(handle.read().decode("latin-1").splitlines())


def _zip_member(archive: zipfile.ZipFile, name: str) -> str | None:
    """The real `name` inside a zip, ignoring macOS resource-fork junk."""
    for member in archive.namelist():
        base = member.rsplit("/", 1)[-1]
        if base == name and not member.startswith("__MACOSX/") and not base.startswith("._"):
            return member
    return None


def _read_csv(handle: IO[bytes] | str) -> pd.DataFrame:
    # Everything as text: "None" stays a category, ids keep their exact spelling.
    return pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[], encoding="latin-1")


def _locate(src: str) -> str:
    """The zip or CSV to read, given the zip, the CSV or a folder holding either."""
    if os.path.isfile(src):
        return src
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: no such file or folder (expected the UCI zip or {DATA_FILE})")
    for candidate in (
        os.path.join(src, DATA_FILE),
        os.path.join(src, "dataset_diabetes", DATA_FILE),
        os.path.join(src, "dataset_diabetes.zip"),
        *sorted(os.path.join(src, n) for n in os.listdir(src) if n.lower().endswith(".zip")),
    ):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{src}: holds neither {DATA_FILE} nor a zip containing it")


def load_uci_raw(src: str) -> tuple[pd.DataFrame, IdMapping, str | None]:
    """Raw frame, id mapping and where the mapping came from (None: not found)."""
    path = _locate(src)
    mapping: IdMapping = {}
    mapping_from: str | None = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = _zip_member(archive, DATA_FILE)
            if member is None:
                raise FileNotFoundError(f"{path}: zip has no {DATA_FILE}")
            with archive.open(member) as handle:
                raw = _read_csv(handle)
            mapping_member = _zip_member(archive, MAPPING_FILE)
            if mapping_member is not None:
                with archive.open(mapping_member) as handle:
                    mapping = _read_mapping(handle)
                mapping_from = f"{path}!{mapping_member}"
    else:
        try:
            raw = _read_csv(path)
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ValueError(f"{path}: not a readable {DATA_FILE} CSV: {err}") from err
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), MAPPING_FILE)
    if not mapping and os.path.isfile(beside):
        with open(beside, "rb") as handle:
            mapping = _read_mapping(handle)
        mapping_from = beside
    _check_columns(raw, path)
    if mapping_from is None:
        log.warning("%s: no %s found; id columns keep their numeric codes", path, MAPPING_FILE)
    return raw, mapping, mapping_from


def import_uci_diabetes(src: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Read the UCI file(s) at `src`, build features and publish a feature folder at `out`."""
    raw, mapping, mapping_from = load_uci_raw(src)
    features = uci_features(raw, mapping)
    # A text column with no value at all has no type parquet can record, and no information.
    empty = [c for c in features.columns if features[c].dtype == object and features[c].isna().all()]
    if empty:
        log.warning("%s: dropping column(s) with no values at all: %s", src, empty)
        features = features.drop(columns=empty)
    spec = FeatureSpec(
        source={
            "kind": "uci-diabetes",
            "path": src,
            "id_mapping": mapping_from,
            "rows_in_file": len(raw),
            "rows_kept": len(features),
            "dropped_death_hospice": len(raw) - len(features),
            "dropped_empty_columns": empty,
            "label_definition": 'readmitted == "<30"',
            "prior_encounters": "count of the patient's earlier encounter_ids in the file",
        },
        id_columns=["admission_id", "patient_id"],
    )
    return write_feature_frame(features, out, spec, overwrite=overwrite)
