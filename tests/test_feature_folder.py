"""A feature folder is opened once as a `FeatureFolder` (resolved and verified) and that object is
passed on: no step after it resolves the folder again (a new S3 client each time) or re-verifies it.
No Ray: the folder is a small pandas frame written with `write_feature_frame`."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import data.featureset as featureset
import data.storage as storage
from data.featureset import (
    FeatureFolder,
    FeatureFolderError,
    FeatureSpec,
    read_manifest,
    read_split_pandas,
    write_feature_frame,
)

SPEC = FeatureSpec(source={"kind": "test"}, id_columns=["admission_id", "patient_id"], text_column="note")


def _frame(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(20, 90, rows)
    return pd.DataFrame(
        {
            "admission_id": [f"a{i}" for i in range(rows)],
            "patient_id": [f"p{i}" for i in range(rows)],
            "age": age.astype("float64"),
            "sex": rng.choice(["F", "M"], rows),
            "lives_alone": rng.random(rows) < 0.3,
            "note": [f"note {i}" for i in range(rows)],
            "label": (rng.random(rows) < (age - 10) / 100).astype("int64"),
        }
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "features"
    write_feature_frame(_frame(), str(out), SPEC)
    return out


@pytest.fixture
def resolves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every resolve of a path into a Location, by the feature-folder code or the storage module."""
    calls: list[str] = []
    original = storage.resolve

    def counting(uri: str | Path, settings: object = None) -> storage.Location:
        calls.append(str(uri))
        return original(uri, settings)

    monkeypatch.setattr(storage, "resolve", counting)
    monkeypatch.setattr(featureset, "resolve", counting)
    yield calls


def test_open_resolves_and_verifies_once_and_answers_what_callers_need(folder: Path, resolves: list) -> None:
    opened = FeatureFolder.open(str(folder))
    assert resolves == [str(folder)]
    assert opened.uri == str(folder) and str(opened) == str(folder)
    assert opened.manifest == json.loads((folder / "manifest.json").read_text())
    assert opened.id_columns == ["admission_id", "patient_id"] and opened.patient_column == "patient_id"
    assert opened.label_column == "label" and opened.text_column == "note"
    assert opened.feature_names == ["age", "sex", "lives_alone"]
    assert [f["type"] for f in opened.features] == ["numeric", "categorical", "boolean"]
    train = opened.read_split("train", ["age", "label"])
    assert (
        list(train.columns) == ["age", "label"] and len(train) == opened.manifest["splits"]["train"]["rows"]
    )
    assert all(p.endswith(".parquet") and "/valid/" in p for p in opened.split_files("valid"))
    assert FeatureFolder.open(opened) is opened  # an open folder is passed on as it is
    assert read_manifest(opened) is opened.manifest
    pd.testing.assert_frame_equal(read_split_pandas(opened, "test"), opened.read_split("test"))
    assert resolves == [str(folder)]  # none of that resolved the folder again
    with pytest.raises(FeatureFolderError, match="unknown split 'dev'"):
        opened.split_files("dev")


def test_the_string_helpers_still_work_and_resolve_once_each(folder: Path, resolves: list) -> None:
    assert read_manifest(str(folder))["format"] == "mediscale-features"
    assert (
        len(read_split_pandas(str(folder), "valid")) == read_manifest(str(folder))["splits"]["valid"]["rows"]
    )
    assert len(resolves) == 3


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FeatureFolderError, match=re.escape(f"{missing}: no manifest.json")):
        FeatureFolder.open(str(missing))


def test_open_checks_every_split_against_the_manifest(folder: Path) -> None:
    valid = FeatureFolder.open(str(folder)).split_files("valid")[0]
    table = pq.read_table(valid).drop_columns(["age"])
    pq.write_table(table.append_column("leak", table.column("label")), valid)
    message = re.escape(f"{folder}: valid: missing column(s) ['age']; valid: column(s) ['leak'] are not in")
    with pytest.raises(FeatureFolderError, match=message):
        FeatureFolder.open(str(folder))


def test_positives_are_checked_again_when_an_open_folder_is_passed_on(folder: Path, resolves: list) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["positives"] = 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        FeatureFolderError, match=re.escape(f"{folder}: train: no positive labels in 'label'")
    ):
        FeatureFolder.open(str(folder))
    scoring = FeatureFolder.open(str(folder), need_positives=False)  # batch scoring needs no labels
    resolves.clear()
    with pytest.raises(FeatureFolderError, match="no positive labels"):
        FeatureFolder.open(scoring)  # a model would train on it: refused, from the manifest alone
    assert resolves == []


def test_pickles_for_ray_workers(folder: Path) -> None:
    opened = FeatureFolder.open(str(folder))
    copy = pickle.loads(pickle.dumps(opened))
    assert copy == opened and copy.uri == opened.uri
    pd.testing.assert_frame_equal(copy.read_split("train"), opened.read_split("train"))


def test_trial_data_and_note_splits_reuse_the_open_folder(folder: Path, resolves: list) -> None:
    from ml.text_tasks import check_task_inputs, load_task
    from tune.xgboost_trial import load_trial_data

    opened = FeatureFolder.open(str(folder))
    data = load_trial_data(opened)
    assert len(data.y_train) == opened.manifest["splits"]["train"]["rows"]
    assert check_task_inputs("readmission", opened) is opened
    splits = load_task("readmission", features=opened)
    assert len(splits.test) == opened.manifest["splits"]["test"]["rows"]
    assert resolves == [str(folder)]
    load_trial_data(str(folder))  # a path is still accepted: opened there, once
    assert len(resolves) == 2


def test_a_search_uses_the_folder_it_was_given_and_refuses_another(folder: Path, tmp_path: Path) -> None:
    from tune.xgboost_search import SearchConfig, SearchError, open_features

    opened = FeatureFolder.open(str(folder))
    config = SearchConfig(features=opened.uri, name="x")
    assert open_features(config, opened) is opened
    assert open_features(config).uri == opened.uri  # a resumed search opens what search.json names
    other = tmp_path / "other"
    write_feature_frame(_frame(seed=4), str(other), SPEC)
    with pytest.raises(SearchError, match=re.escape(f"the open feature folder {other} is not the search's")):
        open_features(config, FeatureFolder.open(str(other)))


def test_s3_folder_is_opened_with_one_client(s3_endpoint: str, resolves: list) -> None:
    uri = "s3://mediscale-test/feature-folder-test"
    write_feature_frame(_frame(), uri, SPEC, overwrite=True)
    resolves.clear()
    opened = FeatureFolder.open(uri)
    assert resolves == [uri] and opened.location.is_s3
    copy = pickle.loads(pickle.dumps(opened))  # S3 endpoint and keys travel with it to a worker
    assert copy.read_split("train").equals(opened.read_split("train"))
    rows = pads.dataset(copy.split_files("valid"), filesystem=copy.fs, format="parquet").count_rows()
    assert rows == opened.manifest["splits"]["valid"]["rows"]
    assert resolves == [uri]
