"""One feature definition: a patient record becomes the pipeline's feature row; unknown is not
zero; `python -m data records` and `python -m ml score` agree with the served scoring path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.record import (
    FEATURE_GROUPS,
    INPUTS,
    PatientRecord,
    completeness,
    mask_groups,
    missing_inputs,
    record_features,
)


def one(**fields) -> pd.Series:
    return record_features([PatientRecord(**fields)]).iloc[0]


# --------------------------------------------------------------------------- fast


def test_measurements_become_the_pipeline_statistics() -> None:
    row = one(heart_rate=[80, 90, 70], labs={"albumin": 2.5})
    assert (row["heart_rate_last"], row["heart_rate_min"], row["heart_rate_max"]) == (70, 70, 90)
    assert row["heart_rate_mean"] == pytest.approx(80) and row["heart_rate_count"] == 3
    assert row["albumin_last"] == 2.5 and row["sodium_count"] == 0 and math.isnan(row["sodium_last"])


def test_unknown_is_not_zero() -> None:
    unknown, none = one(age=70), one(age=70, diagnoses=[], prior_admissions_365d=0)
    assert pd.isna(unknown["charlson_index"]) and pd.isna(unknown["cci_congestive_heart_failure"])
    assert pd.isna(unknown["prior_admissions_365d"])
    assert none["charlson_index"] == 0 and none["cci_congestive_heart_failure"] is False
    assert none["prior_admissions_365d"] == 0
    coded = one(diagnoses=["I509", "E119"])
    assert coded["cci_congestive_heart_failure"] is True and coded["n_diagnoses"] == 2


def test_note_concepts_and_age_cap() -> None:
    row = one(age=104, clinical_note="Denies chest pain. Lives alone.")
    assert row["age"] == 90  # the pipeline's MIMIC-style cap
    assert row["note_chest_pain"] == 0 and row["note_lives_alone"] == 1
    assert all(pd.isna(one(age=70)[c]) for c in FEATURE_GROUPS["note"])


def test_missing_inputs_and_completeness() -> None:
    record = PatientRecord(age=67, heart_rate=80, diagnoses=[], clinical_note="  ")
    missing = missing_inputs(record)
    assert "age" not in missing and "vitals" not in missing and "diagnoses" not in missing
    assert {"labs", "clinical_note", "sex", "prior_admissions_365d"} <= set(missing)
    assert completeness(missing) == pytest.approx(3 / len(INPUTS), abs=1e-4)
    assert missing_inputs(PatientRecord()) == list(INPUTS) and completeness(list(INPUTS)) == 0


def test_mask_groups_blanks_whole_groups_like_absent_inputs() -> None:
    frame = record_features([PatientRecord(age=70, heart_rate=[80, 90], diagnoses=["I509"])] * 400)
    masked = mask_groups(frame, rate=0.5, seed=1)
    blank = masked["heart_rate_last"].isna()
    assert 100 < blank.sum() < 300  # about half
    assert (masked.loc[blank, "heart_rate_count"] == 0).all()  # unmeasured: count 0, stats unknown
    assert masked.loc[blank, "heart_rate_max"].isna().all()
    coded = masked["charlson_index"].isna()
    assert masked.loc[coded, "cci_congestive_heart_failure"].isna().all()
    assert not frame.isna()["age"].any()  # the input frame is untouched


def test_error_messages_name_the_field_but_not_the_value() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        PatientRecord(labs={"albumin": 99.125})
    [error] = info.value.errors()
    assert "albumin" in error["msg"] and "99.125" not in error["msg"]  # the API returns loc + msg only


# --------------------------------------------------------------------------- parity with the pipeline


@pytest.fixture(scope="module")
def test_records(synthetic_raw: Path) -> list[dict]:
    from data.replay import raw_records

    return raw_records(str(synthetic_raw), split="test", limit=150)


def test_records_rebuild_the_pipeline_rows(test_records: list[dict], synthetic_features: Path) -> None:
    from data.featureset import read_split_pandas

    assert len(test_records) == 150 and {r["split"] for r in test_records} == {"test"}
    assert any("clinical_note" in r["record"] for r in test_records)
    rebuilt = record_features([PatientRecord.model_validate(r["record"]) for r in test_records])
    pipeline = read_split_pandas(str(synthetic_features), "test").set_index("admission_id")
    pipeline = pipeline.loc[[r["admission_id"] for r in test_records], list(rebuilt.columns)]
    for column in rebuilt.columns:
        want, got = pipeline[column].reset_index(drop=True), rebuilt[column]
        assert (want.isna() == got.isna()).all(), column
        known = want.notna()
        if pd.api.types.is_numeric_dtype(want) or pd.api.types.is_bool_dtype(want):
            np.testing.assert_allclose(
                want[known].astype(float), got[known].astype(float), rtol=0, atol=1e-9, err_msg=column
            )
        else:
            assert (want[known].astype(str) == got[known].astype(str)).all(), column


def _cli(*args: str, cluster: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": cluster.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_records_and_bad_input(ray_cluster: object, synthetic_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    done = _cli("-m", "data", "records", "--raw", str(synthetic_raw), "--split", "valid", "--limit", "5",
                "--out", str(out), cluster=ray_cluster)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and all(PatientRecord.model_validate(line["record"]) for line in lines)
    bad = _cli("-m", "data", "records", "--raw", str(synthetic_raw), "--split", "tset", "--out", str(out),
               cluster=ray_cluster)  # fmt: skip
    assert bad.returncode == 2 and "tset" in bad.stderr and "Traceback" not in bad.stderr


def test_batch_scores_equal_the_served_scoring_path(
    ray_cluster: object,
    registered_models: dict,
    synthetic_features: Path,
    test_records: list[dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`python -m ml score` (Ray Data, one model load per worker) and serve.scoring.score_tabular
    (what TabularScorer runs on a POSTed record) give the same risk for the same admission."""
    from data.featureset import read_split_pandas
    from ml import registry
    from serve.scoring import score_tabular

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "scores"
    done = _cli("-m", "ml", "score", "--features", str(synthetic_features),
                "--model", "readmission-tabular@champion", "--out", str(out), "--split", "test",
                cluster=ray_cluster)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["version"] == "1" and summary["rows"] == len(
        read_split_pandas(str(synthetic_features), "test")
    )
    assert json.loads((out / "manifest.json").read_text())["rows"] == summary["rows"]
    scores = pd.concat([pd.read_parquet(f) for f in sorted(out.glob("*.parquet"))]).set_index("admission_id")
    registry.configure()
    predictor = registry.load_version("readmission-tabular", "1").unwrap_python_model().predictor
    records = [PatientRecord.model_validate(r["record"]) for r in test_records]
    served = [r.risk for r in score_tabular(predictor, records, top_k=0)]
    batch = scores.loc[[r["admission_id"] for r in test_records], "risk"].to_numpy()
    np.testing.assert_allclose(served, batch, rtol=0, atol=1e-6)
    unknown = _cli("-m", "ml", "score", "--features", str(synthetic_features), "--model", "no-such-model",
                   "--out", str(tmp_path / "x"), cluster=ray_cluster)  # fmt: skip
    assert unknown.returncode == 2 and "no-such-model" in unknown.stderr and "Traceback" not in unknown.stderr


def test_batch_scores_to_s3(
    ray_cluster: object,
    s3_endpoint: str,
    registered_models: dict,
    synthetic_features: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ml score` writes to an S3 URI (a local S3 server) with its manifest, and an existing
    output is kept unless overwrite."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from data.featureset import read_split_pandas
    from data.storage import resolve
    from ml.batch import score_features

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = "s3://mediscale-test/scores"
    summary = score_features(str(synthetic_features), "readmission-tabular@2", out, ["valid"])
    assert summary["version"] == "2" and summary["out"] == out
    remote = resolve(out)
    files = [
        i.path for i in remote.fs.get_file_info(pafs.FileSelector(remote.path)) if i.path.endswith(".parquet")
    ]
    scores = pads.dataset(files, filesystem=remote.fs, format="parquet").to_table().to_pandas()
    assert len(scores) == len(read_split_pandas(str(synthetic_features), "valid")) == summary["rows"]
    assert scores["risk"].between(0, 1).all() and set(scores["version"]) == {"2"}
    with pytest.raises(FileExistsError, match="already holds a complete output; pass --overwrite"):
        score_features(str(synthetic_features), "readmission-tabular@2", out, ["valid"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"age": NaN}', "age"),
        ('{"age": 1e400}', "age"),
        ('{"age": true}', "age"),
        ('{"age": "67"}', "age"),
        ('{"prior_admissions_365d": 2.0}', "prior_admissions_365d"),
        ('{"via_emergency_department": 1}', "via_emergency_department"),
        ('{"labs": {"bnp": [100, Infinity]}}', "bnp"),
        ('{"heart_rate": [80, true]}', "heart_rate"),
        ('{"clinical_note": "pain\\u0000"}', "clinical_note"),
        ('{"patient_id": "P\\ud800"}', "patient_id"),
        ('{"diagnoses": ["I50\\udc00"]}', "diagnoses"),
    ],
)
def test_clinical_fields_are_strict_finite_and_plain_text(body: str, field: str) -> None:
    """Python-side validation (what FastAPI runs on the parsed body): no coercion of booleans or
    text into numbers, no NaN or infinity, no NUL or lone surrogate; the error names the field and
    never the value."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        PatientRecord.model_validate(json.loads(body))
    errors = caught.value.errors(include_input=False)
    assert any(field in map(str, e["loc"]) for e in errors), errors
    assert all("\ud800" not in e["msg"] and "\udc00" not in e["msg"] for e in errors)


def test_measurement_lists_have_a_maximum_length() -> None:
    from pydantic import ValidationError

    from data.record import MAX_VALUES

    assert len(PatientRecord(heart_rate=[80.0] * MAX_VALUES).heart_rate) == MAX_VALUES
    with pytest.raises(ValidationError, match="heart_rate"):
        PatientRecord(heart_rate=[80.0] * (MAX_VALUES + 1))
    assert PatientRecord.model_validate({"age": 67, "prior_admissions_365d": 2}).age == 67.0
