"""Schema validator: a good folder passes; each kind of bad input is named, all at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data.raw import write_raw_folder
from data.synth import generate_block
from data.validate import RawDataError, validate_raw


@pytest.fixture(scope="module")
def good_tables() -> dict[str, pa.Table]:
    return generate_block(seed=5, block=0, n_patients=200)


@pytest.fixture
def good_raw(tmp_path: Path, good_tables: dict[str, pa.Table]) -> Path:
    out = tmp_path / "raw"
    write_raw_folder(str(out), good_tables, source={"kind": "test"})
    return out


def _rewrite(folder: Path, table: str, data: pa.Table) -> None:
    for f in (folder / table).glob("*.parquet"):
        f.unlink()
    pq.write_table(data, folder / table / "part-00000.parquet")


def _kinds(report) -> set[tuple[str, str | None, str]]:
    return {(p.table, p.column, p.kind) for p in report.problems}


def test_good_folder_is_valid(good_raw: Path, good_tables: dict[str, pa.Table]) -> None:
    report = validate_raw(str(good_raw))
    assert report.ok, report.summary()
    assert report.rows["admissions"] == good_tables["admissions"].num_rows
    report.raise_if_failed()


def test_missing_table_and_column_and_wrong_type(good_raw: Path, good_tables: dict[str, pa.Table]) -> None:
    shutil.rmtree(good_raw / "vitals")
    _rewrite(good_raw, "patients", good_tables["patients"].drop_columns(["sex"]))
    labs = good_tables["labs"]
    _rewrite(good_raw, "labs", labs.set_column(3, "value", pc.cast(labs["value"], pa.string())))
    report = validate_raw(str(good_raw))
    assert {
        ("vitals", None, "missing table"),
        ("patients", "sex", "missing column"),
        ("labs", "value", "wrong type"),
    } <= _kinds(report)
    assert "labs.value: wrong type" in report.summary()


def test_impossible_values_are_counted(good_raw: Path, good_tables: dict[str, pa.Table]) -> None:
    vitals = good_tables["vitals"].to_pandas()
    heart = vitals.index[vitals["item"] == "heart_rate"][:3]
    vitals.loc[heart, "value"] = 900.0
    _rewrite(good_raw, "vitals", pa.Table.from_pandas(vitals, schema=good_tables["vitals"].schema))
    admissions = good_tables["admissions"].to_pandas()
    admissions.loc[:1, "discharge_time"] = admissions.loc[:1, "admit_time"] - pd.Timedelta(days=2)
    _rewrite(
        good_raw, "admissions", pa.Table.from_pandas(admissions, schema=good_tables["admissions"].schema)
    )
    report = validate_raw(str(good_raw))
    by_kind = {(p.table, p.column, p.kind): p for p in report.problems}
    assert by_kind[("vitals", "value", "impossible value")].rows == 3
    assert "heart_rate" in by_kind[("vitals", "value", "impossible value")].detail
    assert by_kind[("admissions", "discharge_time", "impossible value")].rows == 2


def test_null_ids_dangling_keys_and_duplicates(good_raw: Path, good_tables: dict[str, pa.Table]) -> None:
    dx = good_tables["diagnoses"].to_pandas()
    dx.loc[:4, "admission_id"] = "A-DOES-NOT-EXIST"
    _rewrite(good_raw, "diagnoses", pa.Table.from_pandas(dx, schema=good_tables["diagnoses"].schema))
    labs = good_tables["labs"]
    ids = labs["admission_id"].to_pylist()
    ids[0] = None
    unsafe = pa.schema([f.with_nullable(True) for f in labs.schema])
    _rewrite(good_raw, "labs", labs.set_column(0, "admission_id", pa.array(ids)).cast(unsafe))
    patients = good_tables["patients"]
    _rewrite(good_raw, "patients", pa.concat_tables([patients, patients.slice(0, 2)]))
    report = validate_raw(str(good_raw))
    by_kind = {(p.table, p.column, p.kind): p for p in report.problems}
    assert by_kind[("diagnoses", "admission_id", "dangling foreign key")].rows == 5
    assert by_kind[("labs", "admission_id", "null values")].rows == 1
    assert by_kind[("patients", "patient_id", "duplicate key")].rows == 2


def test_empty_admissions_is_an_error_but_empty_labs_a_warning(
    good_raw: Path, good_tables: dict[str, pa.Table]
) -> None:
    _rewrite(good_raw, "admissions", good_tables["admissions"].slice(0, 0))
    _rewrite(good_raw, "labs", good_tables["labs"].slice(0, 0))
    report = validate_raw(str(good_raw))
    assert ("admissions", None, "empty table") in _kinds(report)
    assert not any(p.table == "labs" and p.kind == "empty table" for p in report.problems)
    assert "labs is empty" in report.warnings
    with pytest.raises(RawDataError, match="admissions: empty table"):
        report.raise_if_failed()


def test_cli_exit_code_and_message(good_raw: Path, good_tables: dict[str, pa.Table]) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "data", "validate", str(good_raw)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    shutil.rmtree(good_raw / "patients")
    bad = subprocess.run(
        [sys.executable, "-m", "data", "validate", str(good_raw)], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "patients: missing table" in bad.stderr
    assert "Traceback" not in bad.stderr
