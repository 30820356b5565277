"""Tabular model: learns, calibrates, explains, round-trips through the MLflow registry,
and refuses bad feature folders without registering anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data.featureset import FeatureFolderError, read_manifest, read_split_pandas
from ml import metrics
from ml.tabular import Calibrator, Preprocessor, TabularConfig

FAST = TabularConfig(
    max_rounds=120, early_stopping_rounds=15, report_every=40, learning_rate=0.1, max_depth=4
)


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private data dir (sqlite MLflow db + artifacts) for this module."""
    home = tmp_path_factory.mktemp("mlflow-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDISCALE_DATA_DIR", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="module")
def trained(ray_cluster: object, synthetic_features: Path, mlflow_home: Path, tmp_path_factory) -> dict:
    from ml.experiment import train_tabular

    config = FAST.model_copy(update={"scale_pos_weight": "auto", "num_workers": 2})
    return train_tabular(str(synthetic_features), config, register=True, n_boot=200,
                         storage_path=str(tmp_path_factory.mktemp("ray-results")))  # fmt: skip


def test_preprocessor_uses_train_vocabulary_only() -> None:
    manifest = {
        "features": [{"name": "x", "type": "numeric"}, {"name": "c", "type": "categorical"},
                     {"name": "b", "type": "boolean"}],
        "label_column": "label",
    }  # fmt: skip
    train = pd.DataFrame({"x": [1, 2], "c": ["a", "b"], "b": [True, False], "label": [0, 1]})
    pre = Preprocessor.fit(train, manifest)
    out = pre.transform(pd.DataFrame({"x": [3.5], "c": ["zzz"], "b": [None]}))
    assert (
        list(out.columns) == ["x", "b", "c"]
        and out["c"].isna().all()
        and list(out["c"].cat.categories) == ["a", "b"]
    )
    with pytest.raises(FeatureFolderError, match="column 'x'"):
        pre.transform(pd.DataFrame({"x": ["seven"], "c": ["a"], "b": [True]}))
    with pytest.raises(FeatureFolderError, match=r"\['c'\]"):
        pre.transform(pd.DataFrame({"x": [1.0], "b": [True]}))
    assert Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


def test_platt_and_isotonic_fix_a_distorted_probability() -> None:
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.01, 0.5, 20_000)
    y = (rng.random(20_000) < true_p).astype(int)
    distorted = true_p**0.4  # what a heavy positive weight does
    for method in ("isotonic", "platt"):
        cal = Calibrator.fit(distorted[:10_000], y[:10_000], method)
        held_out = cal(distorted[10_000:])
        assert metrics.expected_calibration_error(
            y[10_000:], held_out
        ) < 0.5 * metrics.expected_calibration_error(y[10_000:], distorted[10_000:]), method
    assert Calibrator.fit(distorted[:300], y[:300], "auto").method == "platt"  # few positives
    assert Calibrator.fit(distorted, y, "auto").method == "isotonic"


def test_training_beats_chance_and_calibration_lowers_ece(trained: dict) -> None:
    assert trained["test_auroc"] > 0.65, trained
    low, high = trained["test_auroc_ci"]
    assert low < trained["test_auroc"] < high and low > 0.55
    # auto scale_pos_weight inflates raw probabilities; calibration on valid must undo most of it
    assert trained["test_ece"] < trained["test_ece_uncalibrated"] / 2
    assert set(trained["registered"]["aliases"]) == {"champion", "challenger"}


def test_registry_round_trip_and_contributions(trained: dict, synthetic_features: Path) -> None:
    from ml.experiment import load_predictor
    from ml.registry import load

    manifest = read_manifest(str(synthetic_features))
    test = read_split_pandas(str(synthetic_features), "test").head(300)
    served = load("readmission-tabular", "champion").predict(test[[f["name"] for f in manifest["features"]]])
    predictor = load_predictor()
    assert np.allclose(served["risk"].to_numpy(), predictor.predict_proba(test))
    contributions = predictor.contributions(test)
    assert np.allclose(contributions.sum(axis=1).to_numpy(), predictor.margin(test), atol=1e-4)
    top = predictor.explain(test.head(2), top_k=3)
    assert len(top) == 2 and len(top[0]) == 3 and top[0][0]["feature"] in predictor.feature_names


def _broken_copy(src: Path, dest: Path, mutate) -> Path:
    shutil.copytree(src, dest)
    for split in ("train", "valid", "test"):
        for f in (dest / split).glob("*.parquet"):
            pq.write_table(mutate(pq.read_table(f)), f)
    return dest


def _age_as_text(t):
    return t.set_column(t.schema.get_field_index("age"), "age", t.column("age").cast("string"))


@pytest.mark.parametrize(
    ("case", "mutate", "message"),
    [
        ("missing", lambda t: t.drop_columns(["age"]), r"missing column\(s\) \['age'\]"),
        (
            "extra",
            lambda t: t.append_column("leak", t.column("label")),
            r"\['leak'\] are not in the manifest",
        ),
        ("type", _age_as_text, "column 'age' is categorical, manifest says numeric"),
    ],
)
def test_bad_feature_folders_register_nothing(
    ray_cluster: object, synthetic_features: Path, mlflow_home: Path, tmp_path: Path, case, mutate, message
) -> None:
    from ml.experiment import train_tabular
    from ml.registry import list_models

    before = len(list_models())
    broken = _broken_copy(synthetic_features, tmp_path / case, mutate)
    with pytest.raises(FeatureFolderError, match=message):
        train_tabular(str(broken), FAST, register=True)
    assert len(list_models()) == before


def test_no_positive_labels_is_refused(synthetic_features: Path, tmp_path: Path) -> None:
    from data.featureset import FeatureFolder

    broken = tmp_path / "nopos"
    shutil.copytree(synthetic_features, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["splits"]["train"]["positives"] = 0
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureFolderError, match="no positive labels"):
        FeatureFolder.open(str(broken))


def test_registry_cli_promote_rollback_and_unknown_model(trained: dict, mlflow_home: Path) -> None:
    env = {**os.environ, "MEDISCALE_DATA_DIR": str(mlflow_home)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ml", "registry", *args], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip

    listed = cli("list")
    assert listed.returncode == 0 and "readmission-tabular" in listed.stdout and "champion" in listed.stdout
    unknown = cli("promote", "--model", "no-such-model", "--version", "1")
    assert unknown.returncode == 2 and "no-such-model" in unknown.stderr and "Traceback" not in unknown.stderr
    nothing = cli("rollback", "--model", "readmission-tabular")
    assert nothing.returncode == 2 and "no earlier champion to roll back to" in nothing.stderr, nothing.stderr


def test_canonical_order_ignores_the_order_rows_arrive_in() -> None:
    from ml.tabular import canonical_order

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"a": rng.normal(size=500), "b": rng.integers(0, 3, 500), "y": rng.integers(0, 2, 500)}
    )
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert not shuffled.equals(frame)
    pd.testing.assert_frame_equal(canonical_order(shuffled), canonical_order(frame))


def test_one_seed_gives_one_model(ray_cluster: object, synthetic_features: Path, tmp_path: Path) -> None:
    """Two trainings on the same folder and seed give the same trees and calibration (the blocks
    of a Ray Data read arrive in any order; the seeded missing-group copy must not care)."""
    from ml.tabular import train

    config = FAST.model_copy(update={"max_rounds": 30, "missing_rate": 0.3})
    first, second = (
        train(str(synthetic_features), config, storage_path=str(tmp_path / str(i))) for i in (1, 2)
    )
    assert bytes(first.predictor.booster.save_raw("ubj")) == bytes(second.predictor.booster.save_raw("ubj"))

    def scores(result) -> dict:
        return {k: v for k, v in result.valid_metrics.items() if not k.endswith("_seconds")}

    assert scores(first) == scores(second) and "round" in scores(first)


def test_model_artifacts_hold_no_patient_rows(trained: dict, mlflow_home: Path) -> None:
    """The registered model has a signature (types) but no input example: an example would copy
    test patients' feature values into every model version's artifacts."""
    models = list(mlflow_home.rglob("MLmodel"))
    assert models, "no model artifacts"
    assert not [p for p in mlflow_home.rglob("*") if "input_example" in p.name]
    assert any("signature" in p.read_text() for p in models)
