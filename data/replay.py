"""Raw EHR folder -> `POST /predict` bodies, so anyone can replay real rows against the service.

Each admission becomes one `PatientRecord`: the stay-level values the pipeline derives (age,
LOS, prior admissions, ...; `data.features.stay_features`), every lab and vital in time order,
the stay's ICD codes and its latest discharge summary as written. Feeding a body back through
`data.record.record_features` gives the pipeline's feature row for that admission: the parity
tests check exactly that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads

from data.featureset import SPLITS, split_of
from data.raw import table_files
from data.record import COUNT_FIELDS, STAY_FIELDS, PatientRecord
from data.schema import DISCHARGE_SUMMARY, ITEM_RANGES, LAB_RANGES, TABLES, VITAL_RANGES
from data.storage import resolve
from data.validate import validate_raw


class ReplayError(ValueError):
    """The raw folder or the options cannot give records."""


def _read(folder: Any, table: str, columns: list[str]) -> pd.DataFrame:
    files = table_files(folder, table)
    if not files:
        return pd.DataFrame(columns=columns)
    return pads.dataset(files, filesystem=folder.fs).to_table(columns=columns).to_pandas()


def _value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def raw_records(raw: str, split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """`[{"admission_id", "split", "record"}]` for the admissions of a raw folder (in admission
    order), optionally one split's only and at most `limit`."""
    from data.features import stay_features

    if split is not None and split not in SPLITS:
        raise ReplayError(f"--split: {split!r} is not one of {', '.join(SPLITS)}")
    report = validate_raw(raw)
    report.raise_if_failed()
    folder = resolve(raw)
    patients = _read(folder, "patients", ["patient_id", "sex", "date_of_birth", "ethnicity"])
    stays = _read(folder, "admissions", list(TABLES["admissions"].names)).merge(
        patients, on="patient_id", how="left"
    )
    features = stay_features(stays).to_pandas()
    features["split"] = split_of(features["patient_id"].to_numpy())
    if split is not None:
        features = features.loc[features["split"] == split]
    features = features.sort_values("admission_id", kind="stable")
    if limit is not None:
        features = features.head(limit)
    wanted = set(features["admission_id"])

    measured = pd.concat(
        [_read(folder, t, ["admission_id", "charttime", "item", "value"]) for t in ITEM_RANGES]
    )
    measured = measured.loc[measured["admission_id"].isin(wanted) & measured["value"].notna()]
    measured = measured.sort_values(["admission_id", "item", "charttime"], kind="stable")
    series = measured.groupby(["admission_id", "item"], sort=False)["value"].agg(list)
    codes = _read(folder, "diagnoses", ["admission_id", "icd_code", "icd_version"])
    codes = codes.loc[codes["admission_id"].isin(wanted)]
    notes = _read(folder, "notes", ["admission_id", "charttime", "category", "text"])
    notes = notes.loc[
        notes["admission_id"].isin(wanted)
        & notes["category"].fillna("").str.strip().str.lower().eq(DISCHARGE_SUMMARY.lower())
        & notes["text"].notna()
    ]
    latest = notes.sort_values(["admission_id", "charttime"], kind="stable").groupby("admission_id").tail(1)
    note_of = dict(zip(latest["admission_id"], latest["text"], strict=True))
    codes_of = {aid: group for aid, group in codes.groupby("admission_id", sort=False)}

    out = []
    for row in features.itertuples(index=False):
        body: dict[str, Any] = {"patient_id": str(row.patient_id)}
        body |= {name: _value(getattr(row, name)) for name in STAY_FIELDS}
        for name in COUNT_FIELDS:  # a count read from a float column (NaN elsewhere) is still a count
            if isinstance(body[name], float):
                body[name] = int(body[name])
        vitals = {
            i: [float(v) for v in series[(row.admission_id, i)]]
            for i in VITAL_RANGES
            if (row.admission_id, i) in series
        }
        labs = {
            i: [float(v) for v in series[(row.admission_id, i)]]
            for i in LAB_RANGES
            if (row.admission_id, i) in series
        }
        if vitals:
            body["vitals"] = vitals
        if labs:
            body["labs"] = labs
        group = codes_of.get(row.admission_id)
        body["diagnoses"] = [] if group is None else [str(c) for c in group["icd_code"]]
        if group is not None and len(group):
            versions = group["icd_version"].dropna().astype(int)
            if versions.nunique() > 1:
                # No admission id in the message: errors carry no identifiers.
                raise ReplayError("an admission mixes ICD-9 and ICD-10 codes; a record has one icd_version")
            body["icd_version"] = int(versions.iloc[0]) if len(versions) else 10
        if row.admission_id in note_of:
            body["clinical_note"] = note_of[row.admission_id]
        record = PatientRecord.model_validate({k: v for k, v in body.items() if v is not None})
        out.append(
            {
                "admission_id": str(row.admission_id),
                "split": str(row.split),
                "record": record.model_dump(exclude_none=True, exclude_defaults=False),
            }
        )
    return out


def write_records(raw: str, out: str, split: str | None = None, limit: int | None = None) -> int:
    """Write `raw_records` as JSON lines to a local file; returns the count."""
    rows = raw_records(raw, split, limit)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)
