"""One tracked training run: train, evaluate on test, log to MLflow, optionally register.

The model is logged as an MLflow pyfunc "from code" (ml/pyfunc_tabular.py, nothing pickled) whose
`predictor` artifact is the predictor's own files (booster, preprocessor, calibrator); registration
records their digest. `load_predictor` loads that checked folder directly (with explanations), as
serving does: never through the pyfunc.
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

from data.featureset import FeatureFolder
from ml import metrics, registry
from ml.pyfunc_notes import NotePyfunc
from ml.pyfunc_tabular import TabularPyfunc  # noqa: F401  (pickled older versions name it here)
from ml.tabular import REFERENCE_ROWS, TabularConfig, TabularPredictor, reference_frame, train

log = logging.getLogger(__name__)

TABULAR_MODEL = "readmission-tabular"
MODEL_ARTIFACT = "model"


TABULAR_CODE = Path(__file__).with_name("pyfunc_tabular.py")
NOTE_CODE = Path(__file__).with_name("pyfunc_notes.py")


def log_pyfunc(code: Path, predictor_folder: Path, signature: Any, **options: Any) -> Any:
    """Log a model as MLflow "models from code": `code` (the pyfunc's file) is stored instead of a
    pickled object, and the predictor's own folder becomes its `predictor` artifact."""
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=str(code),
        artifacts={"predictor": str(predictor_folder)},
        signature=signature,
        **options,
    )


def default_storage_path() -> str:
    """Ray Train run folder: under the data dir, which a multi-node cluster must share (NFS/PVC)."""
    from data.config import Settings

    return str((Settings.from_env().data_dir / "ray_results").resolve())


def load_predictor(name: str = TABULAR_MODEL, alias: str = registry.CHAMPION) -> TabularPredictor:
    """The registered predictor behind an alias (with explanations), from its checked folder."""
    return registry.load_verified(name, registry.version_for(name, alias), TabularPredictor.load)


def train_tabular(
    features: str | FeatureFolder,
    config: TabularConfig | None = None,
    register: bool = False,
    model_name: str = TABULAR_MODEL,
    n_boot: int = 1000,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate with bootstrap CIs on test, log everything; returns the test metrics."""
    config = config or TabularConfig()
    folder = FeatureFolder.open(features)  # once, before any run is logged
    registry.configure()
    mlflow.set_experiment(experiment_id=registry.experiment(model_name))
    with mlflow.start_run() as run:
        mlflow.log_params({f"config.{k}": v for k, v in config.model_dump().items()})
        mlflow.log_param("features", folder.uri)
        result = train(folder, config, storage_path=storage_path or default_storage_path())
        predictor, manifest = result.predictor, result.manifest
        mlflow.log_params(
            {"calibration": predictor.calibrator.method, "best_iteration": result.best_iteration}
        )
        mlflow.log_metrics({f"seconds_{k}": v for k, v in result.seconds.items()})
        mlflow.log_metrics({f"final_{k}": v for k, v in result.valid_metrics.items()})

        names = [*predictor.feature_names]
        label = manifest["label_column"]
        test = folder.read_split("test", [*names, label, folder.patient_column])
        y = test[label].to_numpy()
        risk = predictor.predict_proba(test)
        raw = predictor.predict_raw(test)
        report = metrics.evaluate(y, risk, n_boot=n_boot, groups=test[manifest["id_columns"][-1]].to_numpy())
        mlflow.log_metrics(report.mlflow_metrics("test_"))
        uncal_ece = metrics.expected_calibration_error(y, raw)
        mlflow.log_metric("test_ece_uncalibrated", uncal_ece)
        importance = predictor.contributions(test[names]).drop(columns="bias").abs().mean()
        log_tabular_reference(predictor, folder, config.seed)

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
            # The rows only give the signature its types: no input_example is logged, since it
            # would copy real patients' feature values into every model's artifacts.
            numeric = predictor.preprocessor.numeric
            example = test[names].head(5).astype({c: "float64" for c in numeric})
            outputs = pd.DataFrame({"risk": risk[:5], "risk_uncalibrated": raw[:5]})
            signature = mlflow.models.infer_signature(example, outputs)
            log_pyfunc(TABULAR_CODE, saved, signature)
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
            tags = {"features": folder.uri}
            info = registry.register(run.info.run_id, MODEL_ARTIFACT, model_name, tags=tags)
            out["registered"] = {
                "name": info.name,
                "version": info.version,
                "aliases": info.aliases,
                "approval": info.tags.get(registry.APPROVAL_TAG),  # pending until `ml registry approve`
            }
    log.info("test AUROC %.3f %s", out["test_auroc"], out["test_auroc_ci"])
    return out


def log_tabular_reference(predictor: TabularPredictor, folder: FeatureFolder, seed: int = 0) -> None:
    """The drift checks' reference, logged with the run: a seeded sample of the train rows (not the
    missing-group copies), their note descriptors and the model's own risk (ml.tabular)."""
    import time

    started = time.perf_counter()
    text = folder.text_column
    columns = [*predictor.feature_names, *([text] if text else [])]
    train_rows = folder.read_split("train", columns)
    frame = reference_frame(predictor, train_rows, text, REFERENCE_ROWS, seed)
    # The model's risk on rows it was fitted on is optimistic (spread wider than on new patients),
    # so the risk drift test also gets a held-out reference: its risk on the validation split.
    valid = folder.read_split("valid", predictor.feature_names)
    valid = valid.sample(n=REFERENCE_ROWS, random_state=seed) if len(valid) > REFERENCE_ROWS else valid
    holdout = pd.DataFrame({"risk": predictor.predict_proba(valid).astype("float64")})
    kinds = {
        **dict.fromkeys(predictor.preprocessor.numeric, "numeric"),
        **dict.fromkeys(predictor.preprocessor.boolean, "boolean"),
        **dict.fromkeys(predictor.preprocessor.categories, "categorical"),
    }
    registry.log_reference(
        frame,
        {
            "model_kind": "tabular",
            "features": folder.uri,
            "split": "train",
            "train_rows": len(train_rows),
            "seed": seed,
            "feature_columns": predictor.feature_names,
            "kinds": kinds,
            "risk_column": "risk",
            "risk_holdout": f"{registry.REFERENCE_DIR}/{registry.RISK_HOLDOUT_FILE} (valid split)",
        },
        holdout,
    )
    log.info("training reference: %d rows in %.1f s", len(frame), time.perf_counter() - started)


def as_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))


# --------------------------------------------------------------------------- note model

NOTE_MODEL = "readmission-notes"
TASK_MODEL_NAMES = {"readmission": NOTE_MODEL, "negex": "negex-negation", "mtsdialog": "mtsdialog-sections"}


def load_note_predictor(name: str = NOTE_MODEL, alias: str = registry.CHAMPION):
    """The registered NotePredictor behind an alias (tokenizer, calibrator and combiner included),
    from its checked folder."""
    from ml.text import NotePredictor

    return registry.load_verified(name, registry.version_for(name, alias), NotePredictor.load)


def _tabular_risk(frame: pd.DataFrame) -> tuple[np.ndarray, str] | None:
    """The registered tabular champion's risk for these stays, or None when there is none yet."""
    try:
        version = registry.version_for(TABULAR_MODEL, registry.CHAMPION)
        predictor = load_predictor(TABULAR_MODEL, registry.CHAMPION)
    except registry.RegistryError:
        return None
    return predictor.predict_proba(frame), f"{TABULAR_MODEL} v{version}"


NOTE_REFERENCE_ROWS = 500  # the note model scores each row (a BERT forward pass): kept small


def log_note_reference(predictor: Any, train: pd.DataFrame, features: str, seed: int = 0) -> None:
    """The note model's drift reference: descriptors of a seeded sample of its train notes and its
    own calibrated risk on them. No note text."""
    from data.descriptors import descriptor_frame

    sample = (
        train.sample(n=NOTE_REFERENCE_ROWS, random_state=seed) if len(train) > NOTE_REFERENCE_ROWS else train
    )
    texts = pd.DataFrame({"text": sample["text"].astype(str).tolist()})
    frame = descriptor_frame(texts["text"])
    frame["risk"] = NotePyfunc.score(predictor, texts)["risk"].to_numpy(dtype="float64")
    registry.log_reference(
        frame,
        {
            "model_kind": "note",
            "features": features,
            "split": "train",
            "train_rows": len(train),
            "seed": seed,
            "feature_columns": [],
            "kinds": {},
            "risk_column": "risk",
        },
    )


def evaluate_text(predictor, splits, n_boot: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Test-split scores: accuracy and macro-F1 always; F1, AUROC etc. for a positive label."""
    from ml.text_baselines import classification_scores

    texts = splits.test["text"].astype(str).tolist()
    proba = predictor.predict_proba(texts)
    predicted = [predictor.labels[i] for i in proba.argmax(axis=1)]
    truth = splits.test["label"].astype(str).tolist()
    scores = classification_scores(truth, predicted, positive=splits.positive)
    out: dict[str, Any] = {f"test_{k}": v for k, v in scores.items()}
    arrays: dict[str, np.ndarray] = {}
    if splits.positive is not None:
        y = (splits.test["label"].astype(str) == splits.positive).to_numpy().astype(int)
        raw = proba[:, predictor.labels.index(splits.positive)]
        risk = predictor.calibrator(raw) if predictor.calibrator is not None else raw
        report = metrics.evaluate(y, risk, n_boot=n_boot, groups=splits.test["group"].to_numpy())
        out |= report.as_dict("test_")
        arrays = {"y": y, "risk": risk}
    return out, arrays


def train_text(
    task: str,
    config: Any = None,
    features: str | FeatureFolder | None = None,
    datasets: str | None = None,
    register: bool = False,
    model_name: str | None = None,
    n_boot: int = 1000,
    sample: int | None = None,
    storage_path: str | None = None,
    resume_from: str | None = None,
    trained_checkpoint: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fine-tune the note model on a task, calibrate and evaluate it, log it to MLflow.

    For the readmission task the tabular + note combiner is fitted on validation against the
    tabular champion (when one is registered) and stored with the note model.
    `trained_checkpoint` skips training and takes that checkpoint's model (a tuning trial's).
    """
    from ml.combine import RiskCombiner
    from ml.tabular import Calibrator
    from ml.text import NotePredictor, TextConfig, TextTrainResult, fit
    from ml.text_tasks import load_task

    config = config or TextConfig()
    # Opened once: the splits and the drift reference both come from it.
    folder = FeatureFolder.open(features) if task == "readmission" and features else None
    splits = load_task(task, features=folder or features, datasets=datasets, sample=sample, seed=config.seed)
    model_name = model_name or TASK_MODEL_NAMES[task]
    registry.configure()
    mlflow.set_experiment(experiment_id=registry.experiment(model_name))
    with mlflow.start_run() as run:
        mlflow.log_params({f"config.{k}": v for k, v in config.model_dump().items()})
        mlflow.log_params({"task": task, "train_rows": len(splits.train), "labels": ",".join(splits.labels)})
        if trained_checkpoint:
            result = TextTrainResult(
                NotePredictor.from_checkpoint(trained_checkpoint), {}, trained_checkpoint, {}
            )
            mlflow.log_param("trained_checkpoint", trained_checkpoint)
        else:
            storage_path = storage_path or default_storage_path()
            result = fit(splits, config, storage_path=storage_path, resume_from=resume_from)
        predictor = result.predictor
        mlflow.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        mlflow.log_metrics({f"seconds_{k}": v for k, v in result.seconds.items()})
        predictor.positive = splits.positive
        combined: dict[str, Any] = {}
        if splits.positive is not None:
            y_valid = (splits.valid["label"].astype(str) == splits.positive).to_numpy().astype(int)
            raw_valid = predictor.risk_raw(splits.valid["text"].astype(str).tolist())
            predictor.calibrator = Calibrator.fit(raw_valid, y_valid, "auto")
            mlflow.log_param("calibration", predictor.calibrator.method)
            tabular = _tabular_risk(splits.valid) if task == "readmission" else None
            if tabular is not None:
                note_valid = predictor.calibrator(raw_valid)
                combiner = RiskCombiner.fit(tabular[0], note_valid, y_valid, f"{tabular[1]}, valid split")
                predictor.extra["combiner"] = combiner.to_dict()
                combined = {"combiner": combiner.to_dict()}
        if folder is not None:
            log_note_reference(predictor, splits.train, folder.uri, config.seed)
        scores, arrays = evaluate_text(predictor, splits, n_boot)
        if "combiner" in predictor.extra:
            tab_test = _tabular_risk(splits.test)
            both = RiskCombiner(**predictor.extra["combiner"])(tab_test[0], arrays["risk"])
            combined["test_auroc_combined"] = metrics.auroc(arrays["y"], both)
            combined["test_auroc_tabular"] = metrics.auroc(arrays["y"], tab_test[0])
            mlflow.log_metrics({k: v for k, v in combined.items() if isinstance(v, float)})
        mlflow.log_metrics({k: v for k, v in scores.items() if isinstance(v, int | float) and v is not None})
        with tempfile.TemporaryDirectory() as tmp:
            saved = predictor.save(Path(tmp) / "predictor")
            example = pd.DataFrame({"text": splits.test["text"].astype(str).head(3).tolist()})
            signature = mlflow.models.infer_signature(example, NotePyfunc.score(predictor, example))
            log_pyfunc(NOTE_CODE, saved, signature)
        out = {
            "task": task,
            **scores,
            **combined,
            "train_rows": len(splits.train),
            "final": result.metrics,
            "seconds": result.seconds,
            "run_id": run.info.run_id,
            "checkpoint": result.checkpoint_path,
        }
        if register:
            info = registry.register(
                run.info.run_id, MODEL_ARTIFACT, model_name, tags={"task": task, **(tags or {})}
            )
            out["registered"] = {
                "name": info.name,
                "version": info.version,
                "aliases": info.aliases,
                "approval": info.tags.get(registry.APPROVAL_TAG),  # pending until `ml registry approve`
            }
    log.info("note model %s: %s", task, {k: v for k, v in scores.items() if "ci" not in k})
    return out
