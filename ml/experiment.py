"""One tracked training run: train, evaluate on test, log to MLflow, optionally register.

The model is logged as an MLflow pyfunc whose artifacts are the predictor's own files
(booster, preprocessor, calibrator), so `models:/readmission-tabular@champion` loads the
exact object evaluated here; `unwrap_python_model().predictor` gives explanations too.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from data.featureset import read_split_pandas
from ml import metrics, registry
from ml.tabular import TabularConfig, TabularPredictor, train

log = logging.getLogger(__name__)

TABULAR_MODEL = "readmission-tabular"
MODEL_ARTIFACT = "model"


class TabularPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of TabularPredictor: DataFrame of features in, calibrated risk out."""

    def load_context(self, context: Any) -> None:
        self.predictor = TabularPredictor.load(context.artifacts["predictor"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        raw = self.predictor.predict_raw(model_input)
        return pd.DataFrame(
            {"risk": self.predictor.calibrator(raw), "risk_uncalibrated": raw}, index=model_input.index
        )


def load_predictor(name: str = TABULAR_MODEL, alias: str = registry.CHAMPION) -> TabularPredictor:
    """The registered predictor behind an alias (with explanations), not just its pyfunc."""
    return registry.load(name, alias).unwrap_python_model().predictor


def train_tabular(
    features: str,
    config: TabularConfig | None = None,
    register: bool = False,
    model_name: str = TABULAR_MODEL,
    n_boot: int = 1000,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate with bootstrap CIs on test, log everything; returns the test metrics."""
    config = config or TabularConfig()
    registry.configure()
    mlflow.set_experiment(experiment_id=registry.experiment(model_name))
    with mlflow.start_run() as run:
        mlflow.log_params({f"config.{k}": v for k, v in config.model_dump().items()})
        mlflow.log_param("features", features)
        result = train(features, config, storage_path=storage_path)
        predictor, manifest = result.predictor, result.manifest
        mlflow.log_params(
            {"calibration": predictor.calibrator.method, "best_iteration": result.best_iteration}
        )
        mlflow.log_metrics({f"seconds_{k}": v for k, v in result.seconds.items()})
        mlflow.log_metrics({f"final_{k}": v for k, v in result.valid_metrics.items()})

        names = [*predictor.feature_names]
        label = manifest["label_column"]
        test = read_split_pandas(features, "test", [*names, label, manifest["id_columns"][-1]])
        y = test[label].to_numpy()
        risk = predictor.predict_proba(test)
        raw = predictor.predict_raw(test)
        report = metrics.evaluate(y, risk, n_boot=n_boot, groups=test[manifest["id_columns"][-1]].to_numpy())
        mlflow.log_metrics(report.mlflow_metrics("test_"))
        uncal_ece = metrics.expected_calibration_error(y, raw)
        mlflow.log_metric("test_ece_uncalibrated", uncal_ece)
        importance = predictor.contributions(test[names]).drop(columns="bias").abs().mean()

        with tempfile.TemporaryDirectory() as tmp:
            plots = metrics.save_plots(
                y,
                risk,
                list(importance.index),
                importance.to_numpy(),
                Path(tmp) / "plots",
                p_uncalibrated=raw,
            )
            for path in plots.values():
                mlflow.log_artifact(str(path), "plots")
            saved = predictor.save(Path(tmp) / "predictor")
            (Path(tmp) / "feature_manifest.json").write_text(json.dumps(manifest, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "feature_manifest.json"))
            # Numbers as doubles in the signature: a served record may leave any of them missing.
            numeric = predictor.preprocessor.numeric
            example = test[names].head(5).astype({c: "float64" for c in numeric})
            outputs = pd.DataFrame({"risk": risk[:5], "risk_uncalibrated": raw[:5]})
            signature = mlflow.models.infer_signature(example, outputs)
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=TabularPyfunc(),
                artifacts={"predictor": str(saved)},
                signature=signature,
                input_example=example,
            )
        out = {
            **report.as_dict("test_"),
            "test_ece_uncalibrated": uncal_ece,
            "calibration": predictor.calibrator.method,
            "best_iteration": result.best_iteration,
            "run_id": run.info.run_id,
            "seconds": result.seconds,
            "top_features": importance.sort_values(ascending=False).head(10).round(4).to_dict(),
        }
        if register:
            info = registry.register(run.info.run_id, MODEL_ARTIFACT, model_name, tags={"features": features})
            out["registered"] = {"name": info.name, "version": info.version, "aliases": info.aliases}
    log.info("test AUROC %.3f %s", out["test_auroc"], out["test_auroc_ci"])
    return out


def as_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
