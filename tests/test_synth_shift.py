"""Shifted scenarios (`python -m data synth --shift NAME`): each changes what it claims, nothing
else, deterministically; the unshifted generator is byte-identical to before shifts existed."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from data.features import OUTPUT_ORDER, compute_features_pandas
from data.featureset import read_manifest, read_split_pandas
from data.raw import write_raw_folder
from data.synth import (
    CREATININE_UMOL_PER_MG_DL,
    MISSING_LAB_FEED,
    SHIFT_COLUMNS,
    SHIFTS,
    generate_block,
    parse_shifts,
)
from data.validate import validate_raw

N = 400
SEED = 8
# Standard-template headers that the new template never uses (at a line start).
OLD_HEADERS = re.compile(
    r"^(?:History of Present Illness|HPI|Past Medical History|PMH|Social History|Family History|"
    r"Hospital Course|Brief Hospital Course|Discharge Medications|Discharge Meds|Discharge Condition|"
    r"Discharge Disposition|Discharge Diagnosis|Dispo|Review of Systems|Chief Complaint|CC):",
    re.M | re.I,
)


def _digest(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for name in sorted(tables):
        table = tables[name].combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(name.encode())
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def base() -> dict[str, pd.DataFrame]:
    return {k: t.to_pandas() for k, t in generate_block(SEED, 0, N, with_latents=True).items()}


def _shifted(shift: str) -> dict[str, pd.DataFrame]:
    return {k: t.to_pandas() for k, t in generate_block(SEED, 0, N, with_latents=True, shift=shift).items()}


def _summaries(notes: pd.DataFrame) -> pd.Series:
    return notes.loc[notes["category"] == "Discharge summary", "text"]


def test_names_descriptions_and_columns_are_the_interface() -> None:
    assert tuple(SHIFTS) == ("older_hf", "creatinine_umol", "note_template", "missing_lab_feed")
    assert all(isinstance(text, str) and text and "\n" not in text for text in SHIFTS.values())
    assert set(SHIFT_COLUMNS) == set(SHIFTS)
    for name, columns in SHIFT_COLUMNS.items():
        assert columns and set(columns) <= set(OUTPUT_ORDER), name
    assert SHIFT_COLUMNS["creatinine_umol"] == (
        "creatinine_last",
        "creatinine_min",
        "creatinine_max",
        "creatinine_mean",
    )


def test_unshifted_output_is_unchanged() -> None:
    # Digests of generate_block taken before shifts were added; only a deliberate generator
    # change (and a GENERATOR_VERSION bump) may change them.
    assert _digest(generate_block(0, 0, 300)) == (
        "951484fa726bb552499ea7fed1b174b21c524e863335eb8e306be80183311184"
    )
    assert _digest(generate_block(7, 2, 250, shift=[])) == (
        "cab139a08937562d3fbb19123552e705fa6570148fb963f9a0d903f65cd41250"
    )


def test_unknown_shift_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        generate_block(SEED, 0, 10, shift=["older_hf", "younger"])
    assert "younger" in str(err.value)
    assert all(name in str(err.value) for name in SHIFTS)
    assert parse_shifts(None) == parse_shifts([]) == ()
    assert parse_shifts(["missing_lab_feed", "older_hf,missing_lab_feed"]) == ("older_hf", "missing_lab_feed")


def test_shifts_are_deterministic_and_compose() -> None:
    both = ("note_template", "creatinine_umol")
    a, b = generate_block(SEED, 1, 150, shift=both), generate_block(SEED, 1, 150, shift=list(reversed(both)))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(generate_block(SEED + 1, 1, 150, shift=both))
    assert (
        a["labs"].filter(pa.compute.equal(a["labs"]["item"], "creatinine"))["unit"].unique().to_pylist()
    ) == ["umol/L"]
    summaries = _summaries(a["notes"].to_pandas())
    assert len(summaries) > 100 and all("D/C" in t or "d/c" in t for t in summaries)  # measured: 276 of 276


def test_older_hf_is_older_with_more_heart_failure(base: dict[str, pd.DataFrame]) -> None:
    old = _shifted("older_hf")

    def stay_age(b: dict[str, pd.DataFrame]) -> pd.Series:
        d = b["admissions"].merge(b["patients"], on="patient_id")
        return (d["admit_time"] - pd.to_datetime(d["date_of_birth"])).dt.days / 365.25

    assert 7 <= stay_age(old).mean() - stay_age(base).mean() <= 11
    assert old["latents"]["has_chf"].mean() > base["latents"]["has_chf"].mean() + 0.08
    # the rest follows through the generator's own model: codes, BNP, notes
    chf_codes = ("I509", "I5022", "I5032", "I110")

    def coded_chf(b: dict[str, pd.DataFrame]) -> float:
        dx = b["diagnoses"]
        return dx.loc[dx["icd_code"].isin(chf_codes), "admission_id"].nunique() / len(b["admissions"])

    assert coded_chf(old) > coded_chf(base) + 0.05

    def bnp(b: dict[str, pd.DataFrame]) -> float:
        return b["labs"].loc[b["labs"]["item"] == "bnp", "value"].median()

    assert bnp(old) > 1.2 * bnp(base)
    assert old["latents"]["readmit"].mean() > base["latents"]["readmit"].mean()


def test_creatinine_umol_changes_only_creatinine(base: dict[str, pd.DataFrame]) -> None:
    shifted = _shifted("creatinine_umol")
    for name in ("patients", "admissions", "diagnoses", "vitals", "notes", "latents"):
        pd.testing.assert_frame_equal(shifted[name], base[name])
    labs, before = shifted["labs"], base["labs"]
    assert len(labs) == len(before)
    creat = before["item"] == "creatinine"
    np.testing.assert_allclose(
        labs.loc[creat, "value"], before.loc[creat, "value"] * CREATININE_UMOL_PER_MG_DL, atol=0.051
    )
    assert set(labs.loc[creat, "unit"]) == {"umol/L"} and set(before.loc[creat, "unit"]) == {"mg/dL"}
    pd.testing.assert_frame_equal(labs[~creat], before[~creat])


def test_missing_lab_feed_drops_the_labs(base: dict[str, pd.DataFrame]) -> None:
    shifted = _shifted("missing_lab_feed")
    labs, before = shifted["labs"], base["labs"]
    assert set(MISSING_LAB_FEED) == {"albumin", "bnp"}
    assert not labs["item"].isin(MISSING_LAB_FEED).any()
    assert before["item"].isin(MISSING_LAB_FEED).sum() > 100
    kept = before[~before["item"].isin(MISSING_LAB_FEED)].reset_index(drop=True)
    pd.testing.assert_frame_equal(labs.reset_index(drop=True), kept)
    pd.testing.assert_frame_equal(shifted["notes"], base["notes"])


def test_note_template_rewords_the_same_notes(base: dict[str, pd.DataFrame]) -> None:
    shifted = _shifted("note_template")
    for name in ("patients", "admissions", "diagnoses", "labs", "vitals", "latents"):
        pd.testing.assert_frame_equal(shifted[name], base[name])
    new, old = shifted["notes"], base["notes"]
    assert new["admission_id"].tolist() == old["admission_id"].tolist()
    new_text, old_text = _summaries(new), _summaries(old)
    assert (new_text != old_text).all()
    assert old_text.str.contains(OLD_HEADERS).mean() > 0.95
    assert not new_text.str.contains(OLD_HEADERS).any()
    # the abbreviations replace the words everywhere, and appear often
    assert not new_text.str.contains(r"\b(?:with|patient|shortness of breath|history of)\b", case=False).any()
    for abbreviation, at_least in (("w/", 0.8), ("d/c", 0.8), ("pt", 0.5), ("h/o", 0.05), ("SOB", 0.02)):
        share = new_text.str.contains(rf"(?<![A-Za-z]){re.escape(abbreviation)}", case=False).mean()
        assert share >= at_least, (abbreviation, share)
    assert new_text.str.contains(r"\bc/o\b", case=False).any()
    assert new_text.str.contains(r"\bHF\b").any()
    # same facts: medications and the primary problem survive word for word
    for before, after in zip(old_text.head(50), new_text.head(50), strict=True):
        for drug in ("furosemide", "apixaban", "metformin", "lisinopril"):
            assert (drug in before) == (drug in after)
    assert new_text.str.split().str.len().mean() < old_text.str.split().str.len().mean()


def test_unknown_shift_on_the_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "data",
            "synth",
            "--patients",
            "10",
            "--out",
            str(tmp_path / "r"),
            "--shift",
            "nope",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "nope" in run.stderr and all(name in run.stderr for name in SHIFTS)
    assert not (tmp_path / "r").exists()


@pytest.mark.ray
def test_cli_shift_end_to_end_to_features(ray_cluster: object, tmp_path: Path) -> None:
    from data.cli import app

    raw, features, summary = tmp_path / "raw", tmp_path / "features", tmp_path / "raw.json"
    runner = CliRunner()
    args = ["synth", "--patients", "300", "--seed", "5", "--out", str(raw), "--json", str(summary)]
    done = runner.invoke(app, [*args, "--shift", "missing_lab_feed", "--shift", "creatinine_umol"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["source"]["shift"] == ["creatinine_umol", "missing_lab_feed"]
    assert json.loads(summary.read_text())["source"]["shift"] == manifest["source"]["shift"]

    report = validate_raw(str(raw))  # other unit: a warning, not a failure
    assert report.ok, report.summary()
    assert any("creatinine" in w and "umol/L" in w for w in report.warnings)

    done = runner.invoke(app, ["features", "--raw", str(raw), "--out", str(features)])
    assert done.exit_code == 0, done.output
    names = [f["name"] for f in read_manifest(str(features))["features"]]
    assert set(SHIFT_COLUMNS["creatinine_umol"]) | set(SHIFT_COLUMNS["missing_lab_feed"]) <= set(names)
    got = pd.concat([read_split_pandas(str(features), s) for s in ("train", "valid", "test")])

    # the same patients unshifted, featurised in-process
    plain = tmp_path / "plain"
    write_raw_folder(str(plain), generate_block(5, 0, 300), source={"kind": "test"})
    want = compute_features_pandas(str(plain))
    both = got.merge(want, on="admission_id", suffixes=("", "_plain"))
    assert len(both) == len(want) == len(got)
    for column in SHIFT_COLUMNS["creatinine_umol"]:
        np.testing.assert_allclose(
            both[column].astype(float),
            both[f"{column}_plain"].astype(float) * CREATININE_UMOL_PER_MG_DL,
            atol=0.051,
            err_msg=column,
        )
    for lab in MISSING_LAB_FEED:
        assert (both[f"{lab}_count"] == 0).all()
        assert both[[f"{lab}_{s}" for s in ("last", "min", "max", "mean")]].isna().all().all()
        assert both[f"{lab}_count_plain"].sum() > 0
    np.testing.assert_array_equal(both["age"].astype(float), both["age_plain"].astype(float))
