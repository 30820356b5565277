"""Tests for the real-dataset adapters (data.sources).

Handmade inputs cover the logic without any download; tests marked `shared_data` run on the
real public datasets found through MEDISCALE_DATASETS (default `<repo>/../shared/datasets`)
and skip with a reason when they are absent (fail under CI: tests/prerequisites.py).
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from prerequisites import shared_dataset
from sklearn.metrics import roc_auc_score

from data.featureset import SPLITS, read_split_pandas
from data.schema import LAB_RANGES, TABLES, VITAL_RANGES
from data.sources.mimic3 import import_mimic3, map_discharge
from data.sources.text_tasks import mark_concept, negex_split, read_mts_dialog, read_negex
from data.sources.uci_diabetes import (
    MEDICATION_COLUMNS,
    REQUIRED_COLUMNS,
    TERMINAL_DISPOSITION_IDS,
    icd9_group,
    import_uci_diabetes,
    uci_features,
)


def _read_raw_table(folder: Path, table: str) -> pads.Dataset:
    return pads.dataset(sorted((folder / table).glob("*.parquet")), format="parquet")


# --------------------------------------------------------------------------- UCI diabetes


def uci_row(**overrides: str) -> dict[str, str]:
    """One raw diabetic_data.csv row, all text as read from the file."""
    row = dict.fromkeys(REQUIRED_COLUMNS, "0")
    row.update(
        {
            "encounter_id": "100",
            "patient_nbr": "7",
            "race": "Caucasian",
            "gender": "Female",
            "age": "[70-80)",
            "admission_type_id": "1",
            "discharge_disposition_id": "1",
            "admission_source_id": "7",
            "payer_code": "?",
            "medical_specialty": "Cardiology",
            "diag_1": "428",
            "diag_2": "250.83",
            "diag_3": "V45",
            "max_glu_serum": "None",
            "A1Cresult": ">8",
            "change": "Ch",
            "diabetesMed": "Yes",
            "readmitted": "NO",
            **dict.fromkeys(MEDICATION_COLUMNS, "No"),
        }
    )
    row.update(overrides)
    return row


def uci_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            uci_row(encounter_id="300", readmitted="<30"),
            uci_row(encounter_id="100", age="?", race="?", diag_1="?", readmitted=">30"),
            uci_row(encounter_id="200", discharge_disposition_id="11"),  # expired: dropped
            uci_row(encounter_id="150", patient_nbr="8", age="[0-10)", diag_1="E909"),
        ]
    )


ID_MAPPING = {
    "admission_type_id": {"1": "Emergency"},
    "discharge_disposition_id": {"1": "Discharged to home", "11": "Expired"},
    "admission_source_id": {"7": "Emergency Room"},
}


def test_uci_features_handmade() -> None:
    out = uci_features(uci_frame(), ID_MAPPING).set_index("admission_id")
    assert sorted(out.index) == ["100", "150", "300"]  # the expired stay is gone
    assert out.loc["300", "label"] == 1 and out.loc["100", "label"] == 0
    assert out["label"].dtype == np.int8
    # "?" is missing; the age bucket becomes its midpoint.
    assert np.isnan(out.loc["100", "age"]) and out.loc["300", "age"] == 75.0
    assert out.loc["150", "age"] == 5.0
    assert out.loc["300", "race"] == "Caucasian" and out.loc["100", "race"] is None
    assert out.loc["300", "payer_code"] is None
    # "None" in the lab columns means "not measured": a category, not a missing value.
    assert out.loc["300", "max_glu_serum"] == "None"
    # Earlier encounters of the same patient, whatever the row order, dropped ones included.
    assert out.loc["100", "prior_encounters"] == 0
    assert out.loc["300", "prior_encounters"] == 2
    assert out.loc["150", "prior_encounters"] == 0
    assert out.loc["300", "admission_type"] == "Emergency"
    assert out.loc["300", "discharge_disposition"] == "Discharged to home"
    assert out.loc["300", "admission_source"] == "Emergency Room"
    assert list(out.loc["300", ["diag_1_group", "diag_2_group", "diag_3_group"]]) == [
        "circulatory",
        "diabetes",
        "other",
    ]
    assert out.loc["100", "diag_1_group"] is None
    assert out.loc["150", "diag_1_group"] == "other"
    assert "readmitted" not in out.columns
    assert out["time_in_hospital"].dtype == np.int64
    for column in ("race", "gender", "admission_type", "metformin", "diag_1_group"):
        assert out[column].dtype == object


def test_uci_features_without_mapping_keeps_ids_as_text() -> None:
    out = uci_features(uci_frame())
    assert set(out["admission_type"]) == {"1"}
    assert set(out["admission_source"]) == {"7"}


def test_uci_features_missing_column() -> None:
    with pytest.raises(ValueError, match="readmitted"):
        uci_features(uci_frame().drop(columns="readmitted"))


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("428", "circulatory"),
        ("785.5", "circulatory"),
        ("486", "respiratory"),
        ("786", "respiratory"),
        ("560", "digestive"),
        ("250", "diabetes"),
        ("250.13", "diabetes"),
        ("820", "injury"),
        ("715", "musculoskeletal"),
        ("599", "genitourinary"),
        ("788", "genitourinary"),
        ("174", "neoplasms"),
        ("276", "other"),
        ("V57", "other"),
        ("E885", "other"),
        ("?", None),
        (None, None),
    ],
)
def test_icd9_group(code: str | None, group: str | None) -> None:
    assert icd9_group(code) == group


def test_import_uci_from_csv_and_mapping_beside(tmp_path: Path) -> None:
    rows = [uci_row(encounter_id=str(100 + i), patient_nbr=str(i % 40)) for i in range(200)]
    pd.DataFrame(rows).to_csv(tmp_path / "diabetic_data.csv", index=False)
    (tmp_path / "IDs_mapping.csv").write_text(
        "admission_type_id,description\r\n1,Emergency\r\n6,NULL\r\n,\r\n"
        "discharge_disposition_id,description\r\n1,Discharged to home\r\n,\r\n"
        "admission_source_id,description\r\n7, Emergency Room\r\n"
    )
    manifest = import_uci_diabetes(str(tmp_path), str(tmp_path / "out"))
    assert sum(s["rows"] for s in manifest["splits"].values()) == 200
    assert manifest["source"]["kind"] == "uci-diabetes"
    assert manifest["source"]["id_mapping"].endswith("IDs_mapping.csv")
    # payer_code is "?" on every row: no values, no type, so it is left out.
    assert manifest["source"]["dropped_empty_columns"] == ["payer_code"]
    assert "payer_code" not in {f["name"] for f in manifest["features"]}
    frames = [read_split_pandas(str(tmp_path / "out"), s) for s in SPLITS if manifest["splits"][s]["rows"]]
    both = pd.concat(frames)
    assert set(both["admission_source"]) == {"Emergency Room"}
    with pytest.raises(FileExistsError, match="already holds a complete output; pass --overwrite"):
        import_uci_diabetes(str(tmp_path), str(tmp_path / "out"))


def test_import_uci_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.zip"
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        import_uci_diabetes(str(missing), str(tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        import_uci_diabetes(str(empty), str(tmp_path / "out"))
    bad_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(bad_zip, "w") as archive:
        archive.writestr("readme.txt", "no data here")
    with pytest.raises(FileNotFoundError, match="other.zip"):
        import_uci_diabetes(str(bad_zip), str(tmp_path / "out"))
    bad_csv = tmp_path / "diabetic_data.csv"
    pd.DataFrame([uci_row()]).drop(columns="diag_3").to_csv(bad_csv, index=False)
    with pytest.raises(ValueError, match=r"diabetic_data\.csv.*diag_3"):
        import_uci_diabetes(str(bad_csv), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def uci_import(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    zip_path = shared_dataset(datasets_dir, "diabetes130", "dataset_diabetes.zip")
    out = tmp_path_factory.mktemp("uci") / "features"
    return out, import_uci_diabetes(str(zip_path), str(out))


@pytest.mark.shared_data
@pytest.mark.slow
def test_uci_import_real(datasets_dir: Path, uci_import: tuple[Path, dict]) -> None:
    out, manifest = uci_import
    zip_path = datasets_dir / "diabetes130" / "dataset_diabetes.zip"
    with (
        zipfile.ZipFile(zip_path) as archive,
        archive.open("dataset_diabetes/diabetic_data.csv") as f,
    ):
        raw = pd.read_csv(f, usecols=["discharge_disposition_id", "readmitted"])
    assert len(raw) == 101_766
    kept = int((~raw["discharge_disposition_id"].isin(TERMINAL_DISPOSITION_IDS)).sum())
    rows = {s: manifest["splits"][s]["rows"] for s in SPLITS}
    assert sum(rows.values()) == kept == manifest["source"]["rows_kept"]
    assert 0.75 < rows["train"] / kept < 0.85 and 0.07 < rows["test"] / kept < 0.13
    assert json.loads((out / "manifest.json").read_text())["splits"] == manifest["splits"]

    splits = {s: read_split_pandas(str(out), s) for s in SPLITS}
    patients = {s: set(df["patient_id"]) for s, df in splits.items()}
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    both = pd.concat(splits.values(), ignore_index=True)
    assert both["admission_id"].is_unique
    assert 0.10 < both["label"].mean() < 0.125

    names = {f["name"] for f in manifest["features"]}
    assert "readmitted" not in names and "label" not in names
    assert {"age", "prior_encounters", "diag_1_group", "admission_type", "insulin"} <= names
    assert len(names) == 47
    types = {f["name"]: f["type"] for f in manifest["features"]}
    assert types["admission_type"] == "categorical" and types["number_inpatient"] == "numeric"
    # Leakage sentinel: no single feature should come close to predicting the label
    # (the strongest honest one, number_inpatient, reaches about 0.61 ROC-AUC).
    for name in names:
        x = both[name]
        if x.dtype == object:
            x = x.fillna("<NA>")
            x = x.map(both.groupby(x)["label"].mean())
        auc = roc_auc_score(both["label"], x.fillna(-1))
        assert abs(auc - 0.5) < 0.2, f"{name} predicts the label too well (AUC {auc:.3f})"


# --------------------------------------------------------------------------- MIMIC-III


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)


def _mini_mimic(folder: Path) -> None:
    """A two-patient MIMIC-III export with every table the adapter reads."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(
        folder / "PATIENTS.csv",
        [
            {"row_id": 1, "subject_id": 1, "gender": "F", "dob": "1850-01-02 00:00:00", "dod": ""},
            {
                "row_id": 2,
                "subject_id": 2,
                "gender": "M",
                "dob": "2100-05-06 00:00:00",
                "dod": "2160-01-01 00:00:00",
            },
        ],
        ["row_id", "subject_id", "gender", "dob", "dod"],
    )
    adm_cols = [
        "row_id",
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
    _write_csv(
        folder / "ADMISSIONS.csv",
        [
            {
                "row_id": 1,
                "subject_id": 1,
                "hadm_id": 11,
                "admittime": "2150-03-01 10:00:00",
                "dischtime": "2150-03-05 12:00:00",
                "admission_type": "EMERGENCY",
                "discharge_location": "HOME",
                "insurance": "Medicare",
                "ethnicity": "LATER",
                "edregtime": "2150-03-01 08:00:00",
                "hospital_expire_flag": 0,
            },
            {
                "row_id": 2,
                "subject_id": 1,
                "hadm_id": 10,
                "admittime": "2150-01-01 10:00:00",
                "dischtime": "2150-01-04 12:00:00",
                "admission_type": "ELECTIVE",
                "discharge_location": "LEFT AGAINST MEDICAL ADVI",
                "insurance": "Medicare",
                "ethnicity": "WHITE",
                "edregtime": "",
                "hospital_expire_flag": 0,
            },
            {
                "row_id": 3,
                "subject_id": 2,
                "hadm_id": 20,
                "admittime": "2159-12-20 10:00:00",
                "dischtime": "2160-01-01 00:00:00",
                "admission_type": "URGENT",
                "discharge_location": "SNF",
                "insurance": "Private",
                "ethnicity": "ASIAN",
                "edregtime": "",
                "hospital_expire_flag": 1,
            },
        ],
        adm_cols,
    )
    _write_csv(
        folder / "DIAGNOSES_ICD.csv",
        [
            {"row_id": 1, "subject_id": 1, "hadm_id": 10, "seq_num": 1, "icd9_code": "0389"},
            {"row_id": 2, "subject_id": 1, "hadm_id": 10, "seq_num": 2, "icd9_code": ""},
            {"row_id": 3, "subject_id": 2, "hadm_id": 20, "seq_num": 1, "icd9_code": "V4581"},
        ],
        ["row_id", "subject_id", "hadm_id", "seq_num", "icd9_code"],
    )
    lab_cols = [
        "row_id",
        "subject_id",
        "hadm_id",
        "itemid",
        "charttime",
        "value",
        "valuenum",
        "valueuom",
        "flag",
    ]
    _write_csv(
        folder / "LABEVENTS.csv.gz",
        [
            {
                "row_id": 1,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 50912,
                "charttime": "2150-01-02 06:00:00",
                "value": "1.2",
                "valuenum": 1.2,
            },
            {
                "row_id": 2,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 50963,  # NT-proBNP: dropped
                "charttime": "2150-01-02 06:00:00",
                "value": "900",
                "valuenum": 900,
            },
            {
                "row_id": 3,
                "subject_id": 1,
                "hadm_id": "",
                "itemid": 50912,  # outpatient: dropped
                "charttime": "2149-01-02 06:00:00",
                "value": "1.0",
                "valuenum": 1.0,
            },
            {
                "row_id": 4,
                "subject_id": 2,
                "hadm_id": 20,
                "itemid": 51301,
                "charttime": "2159-12-21 06:00:00",
                "value": "12",
                "valuenum": 12,
            },
        ],
        lab_cols,
    )
    chart_cols = [
        "row_id",
        "subject_id",
        "hadm_id",
        "icustay_id",
        "itemid",
        "charttime",
        "value",
        "valuenum",
        "valueuom",
        "error",
    ]
    _write_csv(
        folder / "CHARTEVENTS.csv",
        [
            {
                "row_id": 1,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 211,
                "charttime": "2150-01-02 07:00:00",
                "value": "88",
                "valuenum": 88,
                "error": "",
            },
            {
                "row_id": 2,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 223761,
                "charttime": "2150-01-02 07:00:00",
                "value": "98.6",
                "valuenum": 98.6,
                "error": 0,
            },
            {
                "row_id": 3,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 220045,  # error flag
                "charttime": "2150-01-02 08:00:00",
                "value": "300",
                "valuenum": 300,
                "error": 1,
            },
            {
                "row_id": 4,
                "subject_id": 1,
                "hadm_id": 10,
                "itemid": 999,  # unmapped item
                "charttime": "2150-01-02 08:00:00",
                "value": "5",
                "valuenum": 5,
                "error": 0,
            },
        ],
        chart_cols,
    )
    note_cols = [
        "row_id",
        "subject_id",
        "hadm_id",
        "chartdate",
        "charttime",
        "storetime",
        "category",
        "description",
        "cgid",
        "iserror",
        "text",
    ]
    _write_csv(
        folder / "NOTEEVENTS.csv",
        [
            {
                "row_id": 1,
                "subject_id": 1,
                "hadm_id": 10,
                "chartdate": "2150-01-04",
                "category": "Discharge summary",
                "text": "No chest pain.\nGoing home.",
            },
            {
                "row_id": 2,
                "subject_id": 1,
                "hadm_id": 10,
                "chartdate": "2150-01-04",
                "category": "Nursing",
                "iserror": "1",
                "text": "wrong patient",
            },
        ],
        note_cols,
    )


def test_import_mimic3_handmade(tmp_path: Path) -> None:
    src, out = tmp_path / "mimic", tmp_path / "raw"
    _mini_mimic(src)
    manifest = import_mimic3(str(src), str(out))
    assert manifest["tables"] == {
        "patients": 2,
        "admissions": 3,
        "diagnoses": 2,
        "labs": 2,
        "vitals": 2,
        "notes": 1,
    }
    tables = {t: _read_raw_table(out, t).to_table().to_pandas() for t in TABLES}

    patients = tables["patients"].set_index("patient_id")
    assert patients.loc["1", "ethnicity"] == "WHITE"  # from the first admission by time
    assert str(patients.loc["1", "date_of_birth"]) == "1850-01-02"  # older than pandas' ns range
    assert patients.loc["1", "date_of_death"] is None
    adm = tables["admissions"].set_index("admission_id")
    assert adm.loc["10", "discharge_disposition"] == "AMA"
    assert adm.loc["20", "discharge_disposition"] == "DIED"  # expire flag beats SNF
    assert bool(adm.loc["11", "via_emergency_department"])
    assert not bool(adm.loc["10", "via_emergency_department"])
    assert sorted(tables["diagnoses"]["icd_code"]) == ["0389", "V4581"]  # leading zero kept
    labs = tables["labs"].set_index("item")
    assert labs.loc["creatinine", "value"] == 1.2
    assert labs.loc["wbc", "unit"] == LAB_RANGES["wbc"].unit
    vitals = tables["vitals"].set_index("item")
    assert set(vitals.index) <= set(VITAL_RANGES)
    assert vitals.loc["temperature", "value"] == pytest.approx(37.0)
    assert vitals.loc["heart_rate", "value"] == 88
    assert list(tables["notes"]["category"]) == ["Discharge summary"]
    assert str(tables["notes"]["charttime"].iloc[0]) == "2150-01-04 00:00:00"

    with pytest.raises(FileExistsError, match="already holds a complete output; pass --overwrite"):
        import_mimic3(str(src), str(out))
    import_mimic3(str(src), str(out), overwrite=True)


def test_map_discharge() -> None:
    location = pd.Series(
        [
            "HOME HEALTH CARE",
            "HOSPICE-MEDICAL FACILITY",
            "REHAB/DISTINCT PART HOSP",
            "SHORT TERM HOSPITAL",
            "HOME",
            None,
            "DEAD/EXPIRED",
        ]
    )
    expired = pd.Series([0, 0, 0, 0, 1, 0, 1])
    assert map_discharge(location, expired).tolist() == [
        "HOME_HEALTH",
        "HOSPICE",
        "REHAB",
        "OTHER",
        "DIED",
        None,
        "DIED",
    ]


def test_import_mimic3_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_mimic3(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    src = tmp_path / "mimic"
    _mini_mimic(src)
    (src / "ADMISSIONS.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ADMISSIONS"):
        import_mimic3(str(src), str(tmp_path / "out"))
    _mini_mimic(src)
    pd.read_csv(src / "PATIENTS.csv").drop(columns="dob").to_csv(src / "PATIENTS.csv", index=False)
    with pytest.raises(ValueError, match=r"PATIENTS\.csv.*dob"):
        import_mimic3(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_import_mimic3_demo(datasets_dir: Path, tmp_path: Path) -> None:
    src = shared_dataset(datasets_dir, "mimic3_demo")
    out = tmp_path / "raw"
    manifest = import_mimic3(str(src), str(out))
    assert manifest["tables"]["patients"] == 100
    assert manifest["tables"]["admissions"] == 129
    assert manifest["tables"]["diagnoses"] > 1000
    for table, schema in TABLES.items():
        dataset = _read_raw_table(out, table)
        assert dataset.schema.equals(schema, check_metadata=True), table
        assert dataset.count_rows() == manifest["tables"][table]
    for table in ("labs", "vitals", "notes"):  # not in the demo: present but empty
        assert manifest["tables"][table] == 0
    adm = _read_raw_table(out, "admissions").to_table().to_pandas()
    patients = _read_raw_table(out, "patients").to_table().to_pandas()
    assert adm["admission_id"].is_unique and patients["patient_id"].is_unique
    assert set(adm["patient_id"]) == set(patients["patient_id"])
    assert (adm["discharge_time"] >= adm["admit_time"]).all()
    assert set(adm["discharge_disposition"]) <= {
        "HOME",
        "HOME_HEALTH",
        "SNF",
        "REHAB",
        "AMA",
        "HOSPICE",
        "DIED",
        "OTHER",
    }
    assert (adm["discharge_disposition"] == "DIED").sum() == 40
    assert patients["ethnicity"].notna().all()


# --------------------------------------------------------------------------- text tasks


def test_mark_concept() -> None:
    assert mark_concept("No  Chest pain today.", "chest pain") == ("No  [Chest pain] today.", True)
    assert mark_concept("Fever.", "cough") == ("concept: cough | Fever.", False)


def test_read_negex_handmade(tmp_path: Path) -> None:
    path = tmp_path / "ann.txt"
    lines = [
        "Report No.\tConcept\tSentence\tNegation",
        "3\tfi\u00e8vre \tPatient denies fi\u00e8vre.\t negated ",
        "90\tcough\tShe has a cough.\tAffirmed",
    ]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    df = read_negex(str(path))
    assert df["label"].tolist() == ["Negated", "Affirmed"]
    assert df["text"].iloc[0] == "Patient denies [fi\u00e8vre]."
    assert df["group"].tolist() == [3, 90]
    trainval, test = negex_split(df)
    assert trainval["group"].tolist() == [3] and test["group"].tolist() == [90]


def test_text_readers_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Annotations-1-120.txt"):
        read_negex(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MTS-Dialog-ValidationSet.csv"):
        read_mts_dialog(str(tmp_path), "valid")
    with pytest.raises(ValueError, match="split"):
        read_mts_dialog(str(tmp_path), "test")
    bad = tmp_path / "MTS-Dialog-TrainingSet.csv"
    pd.DataFrame({"ID": [0], "section_header": ["CC"], "dialogue": ["hi"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"MTS-Dialog-TrainingSet\.csv.*section_text"):
        read_mts_dialog(str(tmp_path), "train")


@pytest.mark.shared_data
def test_read_negex_real(datasets_dir: Path) -> None:
    df = read_negex(str(shared_dataset(datasets_dir, "negex", "Annotations-1-120.txt")))
    assert len(df) == 2376
    assert df["label"].value_counts().to_dict() == {"Affirmed": 1885, "Negated": 491}
    assert df["group"].nunique() == 116
    assert {"text", "label", "group", "sentence", "concept"} <= set(df.columns)
    assert df["concept_found"].mean() > 0.99
    trainval, test = negex_split(df)
    assert len(trainval) + len(test) == len(df)
    assert not set(trainval["group"]) & set(test["group"])
    assert test["group"].between(81, 120).all() and trainval["group"].between(1, 80).all()


@pytest.mark.shared_data
def test_read_mts_dialog_real(datasets_dir: Path) -> None:
    folder = shared_dataset(datasets_dir, "mts_dialog")
    train = read_mts_dialog(str(folder), "train")
    valid = read_mts_dialog(str(folder / "MTS-Dialog-ValidationSet.csv"), "valid")
    assert len(train) == 1201 and len(valid) == 100
    assert train["label"].nunique() == 20
    assert set(valid["label"]) <= set(train["label"])
    assert {"text", "label", "group", "dialogue"} <= set(train.columns)
    assert train["text"].str.len().gt(0).all()
