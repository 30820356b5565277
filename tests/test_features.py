"""Feature pipeline end to end on local Ray: same result as the single-process reference,
patient-disjoint splits, the documented label, all-or-nothing output, s3:// in and out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from prerequisites import shared_dataset

from data.features import (
    PartitioningError,
    build_features,
    chunk_features,
    compute_features_pandas,
    patient_slice,
    read_part,
)
from data.featureset import SPLITS, FeatureFolderError, read_manifest, read_split_pandas
from data.raw import write_raw_folder
from data.schema import TABLES
from data.storage import resolve
from data.validate import RawDataError


def _all_splits(folder: str) -> pd.DataFrame:
    counts = read_manifest(folder)["splits"]
    parts = [read_split_pandas(folder, s).assign(split=s) for s in SPLITS if counts[s]["rows"]]
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def reference(synthetic_raw: Path) -> pd.DataFrame:
    """The single-process features of the session's synthetic raw folder, by admission."""
    return compute_features_pandas(str(synthetic_raw)).sort_values("admission_id").reset_index(drop=True)


def _sorted(folder: Path | str) -> pd.DataFrame:
    return _all_splits(str(folder)).sort_values("admission_id").reset_index(drop=True)


def test_ray_pipeline_matches_single_process_reference(
    synthetic_features: Path, reference: pd.DataFrame
) -> None:
    got = _sorted(synthetic_features)
    assert len(got) > 5000
    assert read_manifest(str(synthetic_features))["pipeline"] == "patient parts, no shuffle"
    pd.testing.assert_frame_equal(got[reference.columns], reference, check_dtype=False)


def _without_partitioning(raw: Path, dest: Path) -> Path:
    shutil.copytree(raw, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest.pop("partitioning")["parts"] == 2  # the synthetic folder is written in 2 parts
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_folders_without_patient_parts_give_the_same_features_read_whole_or_shuffled(
    ray_cluster: object, synthetic_raw: Path, reference: pd.DataFrame, tmp_path: Path
) -> None:
    raw = _without_partitioning(synthetic_raw, tmp_path / "raw")
    for shuffle, plan in ((False, "whole folder in patient slices"), (True, "one shuffle on the patient")):
        out = tmp_path / f"features-{shuffle}"
        assert build_features(str(raw), str(out), shuffle=shuffle)["pipeline"] == plan
        pd.testing.assert_frame_equal(_sorted(out)[reference.columns], reference, check_dtype=False)


def test_patient_slices_split_a_part_into_whole_disjoint_patients(
    synthetic_raw: Path, reference: pd.DataFrame
) -> None:
    part = read_part(resolve(str(synthetic_raw)), 1)
    slices = [patient_slice(part, i, 3) for i in range(3)]
    patients = [set(s["patients"]["patient_id"]) for s in slices]
    assert all(patients) and set.union(*patients) == set(part["patients"]["patient_id"])
    assert sum(len(p) for p in patients) == len(part["patients"])
    for piece in slices:  # every child row goes with its own patient's slice
        stays = set(piece["admissions"]["admission_id"])
        assert set(piece["admissions"]["patient_id"]) <= set(piece["patients"]["patient_id"])
        assert set(piece["labs"]["admission_id"]) <= stays and set(piece["notes"]["admission_id"]) <= stays
    got = pd.concat([chunk_features(s) for s in slices]).sort_values("admission_id").reset_index(drop=True)
    want = reference.loc[reference["admission_id"].isin(got["admission_id"])].reset_index(drop=True)
    assert len(want) == len(got) > 0
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_a_false_patient_partitioning_claim_is_refused_naming_the_file(
    ray_cluster: object, synthetic_raw: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    labs = raw / "labs"  # part 0's labs now belong to part 1's stays, and the other way round
    (labs / "part-00000.parquet").rename(labs / "swap")
    (labs / "part-00001.parquet").rename(labs / "part-00000.parquet")
    (labs / "swap").rename(labs / "part-00001.parquet")
    with pytest.raises(
        PartitioningError, match=r"labs/part-0000[01]\.parquet: \d+ row\(s\) whose admission_id"
    ):
        build_features(str(raw), str(tmp_path / "features"))
    assert not (tmp_path / "features").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]
    (labs / "part-00009.parquet").write_bytes((labs / "part-00000.parquet").read_bytes())
    with pytest.raises(PartitioningError, match=r"labs has the file 'part-00009.parquet'"):
        build_features(str(raw), str(tmp_path / "features"))


def test_manifest_counts_and_patient_disjoint_splits(synthetic_features: Path) -> None:
    manifest = read_manifest(str(synthetic_features))
    rows = _all_splits(str(synthetic_features))
    for split in SPLITS:
        part = rows[rows["split"] == split]
        assert manifest["splits"][split]["rows"] == len(part) > 0
        assert manifest["splits"][split]["patients"] == part["patient_id"].nunique()
        assert manifest["splits"][split]["label_rate"] == pytest.approx(part["label"].mean())
    patients = {s: set(rows.loc[rows["split"] == s, "patient_id"]) for s in SPLITS}
    assert not (patients["train"] & patients["valid"] or patients["train"] & patients["test"]
                or patients["valid"] & patients["test"])  # fmt: skip
    assert 0.7 < manifest["splits"]["train"]["rows"] / len(rows) < 0.9
    types = {f["name"]: f["type"] for f in manifest["features"]}
    assert types["creatinine_last"] == "numeric" and types["sex"] == "categorical"
    assert types["via_emergency_department"] == "boolean"
    assert "label" not in types and "note" not in types and manifest["text_column"] == "note"
    assert rows["admission_id"].is_unique


def _stay(aid: str, pid: str, admit: str, days: float, disposition: str = "HOME", ed: bool = False) -> dict:
    start = pd.Timestamp(admit)
    return {
        "admission_id": aid, "patient_id": pid, "admit_time": start,
        "discharge_time": start + pd.Timedelta(days=days), "admission_type": "EMERGENCY",
        "via_emergency_department": ed, "discharge_disposition": disposition, "insurance": "Medicare",
    }  # fmt: skip


def _tiny_raw(out: Path) -> None:
    stays = [
        _stay("a1", "p1", "2019-01-01", 3, ed=True),  # next stay 10 days after discharge: label 1
        _stay("a2", "p1", "2019-01-14", 2, ed=True),  # next stay 40 days later: label 0
        _stay("a3", "p1", "2019-02-25", 5, disposition="DIED"),  # death: no label, dropped
        _stay("b1", "p2", "2019-03-01", 1),  # only stay: label 0
        _stay("c1", "p3", "2018-01-01", 2),  # 400 days before c2: outside the 365-day window
        _stay("c2", "p3", "2019-02-05", 2),
    ]
    tables = {
        "patients": pd.DataFrame(
            {
                "patient_id": ["p1", "p2", "p3"],
                "sex": ["F", "M", "F"],
                "date_of_birth": pd.to_datetime(["1950-01-01", "1980-06-01", "1940-01-01"]).date,
                "ethnicity": ["WHITE", None, "ASIAN"],
                "date_of_death": [None, None, None],
            }
        ),  # fmt: skip
        "admissions": pd.DataFrame(stays),
        "diagnoses": pd.DataFrame(
            {
                "admission_id": ["a1", "a1", "a1", "b1"],
                "icd_code": ["I509", "E1122", "C787", "J449"],
                "icd_version": [10, 10, 10, 10],
                "seq_num": [1, 2, 3, 1],
            }
        ),  # fmt: skip
        "labs": pd.DataFrame(
            {
                "admission_id": ["a1", "a1", "a1"],
                "charttime": pd.to_datetime(["2019-01-03", "2019-01-01", "2019-01-02"]),
                "item": ["creatinine"] * 3,
                "value": [1.5, 3.0, 2.1],
                "unit": ["mg/dL"] * 3,
            }
        ),  # fmt: skip
        "vitals": pd.DataFrame(
            {
                "admission_id": ["b1"],
                "charttime": pd.to_datetime(["2019-03-01"]),
                "item": ["heart_rate"],
                "value": [88.0],
            }
        ),  # fmt: skip
        "notes": pd.DataFrame(
            {
                "admission_id": ["a1", "a1", "a1"],
                "charttime": pd.to_datetime(["2019-01-02", "2019-01-04", "2019-01-03"]),
                "category": ["Discharge summary", "Discharge summary", "Nursing"],
                "text": ["old draft", "Pt  [**Name**] denies chest pain.\n\n\nLives alone.", "nursing"],
            }
        ),  # fmt: skip
    }
    write_raw_folder(str(out), tables, source={"kind": "test"})


def test_label_utilisation_and_aggregates_on_a_handmade_record(ray_cluster: object, tmp_path: Path) -> None:
    _tiny_raw(tmp_path / "raw")
    manifest = build_features(str(tmp_path / "raw"), str(tmp_path / "features"))
    rows = _all_splits(str(tmp_path / "features")).set_index("admission_id")
    assert sorted(rows.index) == ["a1", "a2", "b1", "c1", "c2"]  # the death is dropped
    assert rows["label"].to_dict() == {"a1": 1, "a2": 0, "b1": 0, "c1": 0, "c2": 0}
    assert rows.loc["a2", "prior_admissions_365d"] == 1 and rows.loc["a2", "prior_ed_visits_365d"] == 1
    assert rows.loc["a2", "days_since_last_discharge"] == pytest.approx(10)
    assert rows.loc["c2", "prior_admissions_365d"] == 0 and pd.isna(
        rows.loc["a1", "days_since_last_discharge"]
    )
    assert rows.loc["a1", "creatinine_last"] == 1.5 and rows.loc["a1", "creatinine_max"] == 3.0
    assert rows.loc["a1", "creatinine_count"] == 3 and rows.loc["a2", "creatinine_count"] == 0
    # CHF 1 + complicated diabetes 2 + metastatic tumour 6
    assert rows.loc["a1", "charlson_index"] == 9 and rows.loc["b1", "charlson_index"] == 1
    assert rows.loc["a1", "note"] == "Pt ___ denies chest pain.\nLives alone."
    assert pd.isna(rows.loc["b1", "note"])
    assert rows.loc["a1", "age"] == pytest.approx(69.0, abs=0.1)
    assert sum(s["rows"] for s in manifest["splits"].values()) == 5


def test_bad_input_fails_clearly_and_writes_nothing(ray_cluster: object, tmp_path: Path) -> None:
    _tiny_raw(tmp_path / "raw")
    labs = next((tmp_path / "raw" / "labs").glob("*.parquet"))
    pd.DataFrame({"admission_id": ["a1"], "charttime": [pd.Timestamp("2019-01-01")], "item": ["creatinine"],
                  "value": [-4.0], "unit": ["mg/dL"]}).to_parquet(labs)  # fmt: skip
    with pytest.raises(RawDataError, match=r"labs.value: impossible value \(1 rows\)"):
        build_features(str(tmp_path / "raw"), str(tmp_path / "features"))
    assert not (tmp_path / "features").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_existing_output_is_kept_unless_overwrite(
    ray_cluster: object, synthetic_features: Path, tmp_path: Path
) -> None:
    # an existing feature folder (a copy of the session's, so one build less) is refused ...
    shutil.copytree(synthetic_features, tmp_path / "features")
    before = (tmp_path / "features" / "manifest.json").read_text()
    _tiny_raw(tmp_path / "raw")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_features(str(tmp_path / "raw"), str(tmp_path / "features"))
    assert (tmp_path / "features" / "manifest.json").read_text() == before
    # ... and replaced with --overwrite: the tiny raw's 5 labelled stays, nothing of the old rows left
    build_features(str(tmp_path / "raw"), str(tmp_path / "features"), overwrite=True)
    assert read_manifest(str(tmp_path / "features"))["created_at"] >= json.loads(before)["created_at"]
    assert set(_all_splits(str(tmp_path / "features"))["admission_id"]) == {"a1", "a2", "b1", "c1", "c2"}
    with pytest.raises(FeatureFolderError, match="no manifest.json"):
        read_manifest(str(tmp_path / "raw-does-not-exist"))


def test_mimic3_demo_through_the_pipeline(ray_cluster: object, datasets_dir: Path, tmp_path: Path) -> None:
    from data.sources import import_mimic3

    import_mimic3(str(shared_dataset(datasets_dir, "mimic3_demo")), str(tmp_path / "raw"))
    manifest = build_features(str(tmp_path / "raw"), str(tmp_path / "features"))
    admissions = pd.read_csv(datasets_dir / "mimic3_demo" / "ADMISSIONS.csv")
    terminal = (admissions["hospital_expire_flag"] == 1) | admissions["discharge_location"].str.startswith(
        "HOSPICE"
    )
    total = sum(s["rows"] for s in manifest["splits"].values())
    assert total == int((~terminal).sum())
    rows = _all_splits(str(tmp_path / "features"))
    assert rows["label"].sum() >= 1 and rows["creatinine_count"].eq(0).all() and rows["note"].isna().all()
    assert (rows["age"] <= 90).all() and rows["charlson_index"].max() > 0


def test_s3_round_trip(
    ray_cluster: object, s3_endpoint: str, synthetic_raw: Path, reference: pd.DataFrame
) -> None:
    remote = resolve("s3://mediscale-test/raw")
    pafs.copy_files(str(synthetic_raw), remote.path, destination_filesystem=remote.fs)
    manifest = build_features("s3://mediscale-test/raw", "s3://mediscale-test/features")
    assert read_manifest("s3://mediscale-test/features") == manifest
    assert manifest["pipeline"] == "patient parts, no shuffle"  # parts read straight from S3
    remote_rows = _sorted("s3://mediscale-test/features")
    pd.testing.assert_frame_equal(remote_rows[reference.columns], reference, check_dtype=False)
    leftovers = [
        i.path for i in remote.fs.get_file_info(pafs.FileSelector("mediscale-test", recursive=False))
    ]
    assert not [p for p in leftovers if "staging" in p]


def test_cli_features_and_bad_input(ray_cluster: object, tmp_path: Path) -> None:
    _tiny_raw(tmp_path / "raw")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    cmd = [
        sys.executable,
        "-m",
        "data",
        "features",
        "--raw",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "f"),
        "--json",
        str(tmp_path / "summary.json"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == read_manifest(str(tmp_path / "f"))
    assert sum(s["rows"] for s in summary["splits"].values()) == 5
    missing = [
        sys.executable,
        "-m",
        "data",
        "features",
        "--raw",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "g"),
    ]
    bad = subprocess.run(missing, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "missing folder" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "g").exists()


def test_schema_tables_are_documented() -> None:
    for name, schema in TABLES.items():
        for field in schema:
            assert field.metadata and field.metadata[b"doc"], f"{name}.{field.name} has no doc"
