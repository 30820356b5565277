"""Structured-data readmission model: XGBoost on Ray Train, calibrated, explainable.

Training runs `train_fn_per_worker` under `ray.train.xgboost.XGBoostTrainer` (Ray Train V2):
each worker reads its shard of the train/valid splits through Ray Data, and XGBoost's own
collective (set up by Ray) makes the workers one model. Reports go to Ray Train every
`report_every` rounds and at the end (a report costs about a second here), and the final
report carries the booster as a checkpoint.

The preprocessor (category vocabularies, column order) is fitted on the train split only and
travels with the model, as does the calibrator, fitted on the validation split:

- isotonic regression when validation has at least ISOTONIC_MIN_POSITIVES positives: it
  fixes any monotone distortion (class weighting distorts a lot) and has enough data;
- Platt scaling (logistic on the log-odds) below that, where a step function would overfit.

Explanations are XGBoost's own `pred_contribs` (exact TreeSHAP): per feature, in log-odds;
with the bias they sum to the model's margin.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost
from pydantic import BaseModel, Field

from data.featureset import FeatureFolder, FeatureFolderError

log = logging.getLogger(__name__)

MODEL_FILE = "model.ubj"
PREPROCESSOR_FILE = "preprocessor.json"
CALIBRATOR_FILE = "calibrator.json"
META_FILE = "meta.json"
ISOTONIC_MIN_POSITIVES = 200


class TabularConfig(BaseModel):
    """Everything a training run depends on; logged to MLflow as parameters."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel XGBoost).")
    use_gpu: bool = Field(False, description="Train with CUDA on one GPU per worker.")
    cpus_per_worker: int = Field(1, ge=1, description="Threads per worker (nthread).")
    max_rounds: int = Field(400, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_depth: int = Field(5, ge=1, le=16)
    min_child_weight: float = Field(1.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_cat_to_onehot: int = Field(8, ge=1)
    scale_pos_weight: float | Literal["auto"] | None = Field(
        None, description="Positive class weight; 'auto' = negatives / positives on train."
    )
    report_every: int = Field(50, ge=1, description="Report to Ray Train every N rounds.")
    calibration: Literal["auto", "isotonic", "platt", "none"] = "auto"
    missing_rate: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="Train also on a copy of the train rows in which each feature group is unknown "
        "with this probability (data.record.mask_groups), so partial records are in distribution; 0: off.",
    )
    monotone: bool = Field(
        True,
        description="More prior admissions, ED visits, Charlson points, LOS or documented note "
        "findings never lower the risk (data.record.MONOTONE_INCREASING).",
    )
    additive_drivers: bool = Field(
        True,
        description="Each note concept and each monotone clinical driver (prior admissions, ED "
        "visits, Charlson points, LOS) acts alone (XGBoost interaction constraints): 'lives alone' "
        "or one more admission moves every patient's log-odds by the same step.",
    )
    seed: int = 0

    def xgb_params(self, scale_pos_weight: float | None, columns: list[str] | None = None) -> dict[str, Any]:
        params = {
            "objective": "binary:logistic",
            "eval_metric": ["auc", "logloss"],  # early stopping watches the last: logloss
            "tree_method": "hist",
            "device": "cuda" if self.use_gpu else "cpu",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "max_cat_to_onehot": self.max_cat_to_onehot,
            "nthread": self.cpus_per_worker,
            "seed": self.seed,
        }
        if scale_pos_weight:
            params["scale_pos_weight"] = scale_pos_weight
        if self.monotone and columns:
            from data.record import MONOTONE_DECREASING, MONOTONE_INCREASING

            constrained = {name: 1 for name in MONOTONE_INCREASING if name in columns}
            constrained |= {name: -1 for name in MONOTONE_DECREASING if name in columns}
            if constrained:
                params["monotone_constraints"] = constrained
        if self.additive_drivers and columns:
            from data.concepts import NOTE_PREFIX
            from data.record import MONOTONE_INCREASING

            alone = [c for c in columns if c.startswith(NOTE_PREFIX) or c in MONOTONE_INCREASING]
            if alone:
                rest = [c for c in columns if c not in alone]
                params["interaction_constraints"] = [rest, *([c] for c in alone)]
        return params


# --- preprocessing ---------------------------------------------------------------------------


@dataclass
class Preprocessor:
    """Column order and category vocabularies, fitted on train, applied everywhere."""

    numeric: list[str]
    boolean: list[str]
    categories: dict[str, list[str]]
    label: str = "label"

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.boolean, *self.categories]

    @classmethod
    def fit(cls, train: pd.DataFrame, manifest: dict[str, Any]) -> Preprocessor:
        kinds = {f["name"]: f["type"] for f in manifest["features"]}
        categorical = [n for n, k in kinds.items() if k == "categorical"]
        return cls(
            numeric=[n for n, k in kinds.items() if k == "numeric"],
            boolean=[n for n, k in kinds.items() if k == "boolean"],
            categories={name: sorted(str(v) for v in train[name].dropna().unique()) for name in categorical},
            label=manifest["label_column"],
        )

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Model input: numbers as float32, categories with the train vocabulary (unseen -> NaN)."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise FeatureFolderError(f"input lacks feature column(s) {missing}")
        # Columns already numeric are cast together (a per-column loop over ~200 columns cost most
        # of a served request); only text-typed columns go through the checked conversion.
        numeric = df[self.numeric]
        typed = [c for c in self.numeric if pd.api.types.is_numeric_dtype(numeric[c].dtype)]
        parts = [numeric[typed].astype("float32")]
        for name in (c for c in self.numeric if c not in set(typed)):
            values = pd.to_numeric(df[name], errors="coerce")
            bad = values.isna() & df[name].notna()
            if bad.any():
                raise FeatureFolderError(f"column {name!r}: {int(bad.sum())} value(s) are not numbers")
            parts.append(values.astype("float32").to_frame(name))
        parts.append(df[self.boolean].astype("float32"))
        categories = {}
        for name, vocabulary in self.categories.items():
            values = df[name].astype("string").astype(object).where(df[name].notna(), None)
            categories[name] = pd.Categorical(values, categories=vocabulary)
        parts.append(pd.DataFrame(categories, index=df.index))
        return pd.concat(parts, axis=1)[self.columns]

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "boolean": self.boolean,
            "categories": self.categories,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(**data)


# --- calibration -----------------------------------------------------------------------------


@dataclass
class Calibrator:
    """Maps raw probabilities to calibrated ones; stored as plain numbers (no pickles)."""

    method: Literal["isotonic", "platt", "none"]
    x: list[float] = field(default_factory=list)  # isotonic knots
    y: list[float] = field(default_factory=list)
    coef: float = 1.0  # platt: sigmoid(coef * logit(p) + intercept)
    intercept: float = 0.0

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, method: str = "auto") -> Calibrator:
        if method == "auto":
            method = "isotonic" if int(y.sum()) >= ISOTONIC_MIN_POSITIVES else "platt"
        if method == "none":
            return cls("none")
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            return cls("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
        return cls("platt", coef=float(lr.coef_[0, 0]), intercept=float(lr.intercept_[0]))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            return np.interp(raw, self.x, self.y)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.coef * _logit(raw) + self.intercept)))
        return raw

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# --- the predictor that serving and evaluation use ------------------------------------------


class TabularPredictor:
    """Booster + preprocessor + calibrator: the same outputs at training and serving time."""

    def __init__(self, booster: xgboost.Booster, preprocessor: Preprocessor, calibrator: Calibrator,
                 meta: dict[str, Any] | None = None):  # fmt: skip
        self.booster = booster
        self.preprocessor = preprocessor
        self.calibrator = calibrator
        self.meta = meta or {}

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.columns

    def _matrix(self, df: pd.DataFrame) -> xgboost.DMatrix:
        return xgboost.DMatrix(self.preprocessor.transform(df), enable_categorical=True)

    def predict_raw(self, df: pd.DataFrame) -> np.ndarray:
        """Uncalibrated probability of readmission."""
        return self.booster.predict(self._matrix(df))

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of readmission."""
        return self.calibrator(self.predict_raw(df))

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per-feature log-odds contributions plus `bias`; each row sums to the margin."""
        return self._contributions(self._matrix(df), df.index)

    def _contributions(self, matrix: xgboost.DMatrix, index: pd.Index) -> pd.DataFrame:
        values = self.booster.predict(matrix, pred_contribs=True)
        return pd.DataFrame(values, columns=[*self.feature_names, "bias"], index=index)

    def score(self, df: pd.DataFrame, contributions: bool = True) -> tuple[np.ndarray, pd.DataFrame | None]:
        """Calibrated risk and (optionally) contributions from one transform: what serving needs
        per call, without preprocessing the same rows twice."""
        matrix = self._matrix(df)
        risk = self.calibrator(self.booster.predict(matrix))
        return risk, self._contributions(matrix, df.index) if contributions else None

    def margin(self, df: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self._matrix(df), output_margin=True)

    def explain(self, df: pd.DataFrame, top_k: int = 5) -> list[list[dict[str, float | str]]]:
        """The `top_k` features pushing each prediction, largest absolute contribution first."""
        contrib = self.contributions(df).drop(columns="bias")
        out = []
        for _, row in contrib.iterrows():
            top = row.abs().sort_values(ascending=False).index[:top_k]
            out.append([{"feature": name, "contribution": float(row[name])} for name in top])
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / MODEL_FILE)
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(self.preprocessor.to_dict(), indent=2))
        (directory / CALIBRATOR_FILE).write_text(json.dumps(self.calibrator.to_dict()))
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TabularPredictor:
        directory = Path(directory)
        booster = xgboost.Booster()
        booster.load_model(directory / MODEL_FILE)
        return cls(
            booster,
            Preprocessor.from_dict(json.loads((directory / PREPROCESSOR_FILE).read_text())),
            Calibrator(**json.loads((directory / CALIBRATOR_FILE).read_text())),
            json.loads((directory / META_FILE).read_text()),
        )


# --- Ray Train ---------------------------------------------------------------------------------


class ReportEvery(xgboost.callback.TrainingCallback):
    """Report to Ray Train every N rounds and once at the end, with the booster as checkpoint."""

    def __init__(self, every: int, data_seconds: float = 0.0):
        self.every = every
        self.last: dict[str, float] = {}
        self.data_seconds = data_seconds
        self.report_seconds = 0.0  # time inside ray.train.report: overhead, not training
        self.started = time.perf_counter()

    def before_training(self, model: xgboost.Booster) -> xgboost.Booster:
        self.started = time.perf_counter()
        return model

    @staticmethod
    def _latest(evals_log: dict) -> dict[str, float]:
        return {
            f"{data}_{metric}": float(values[-1])
            for data, m in evals_log.items()
            for metric, values in m.items()
        }

    def after_iteration(self, model: xgboost.Booster, epoch: int, evals_log: dict) -> bool:
        import ray.train

        self.last = {"round": epoch + 1, **self._latest(evals_log)}
        if (epoch + 1) % self.every == 0:
            started = time.perf_counter()
            ray.train.report(self.last)
            self.report_seconds += time.perf_counter() - started
        return False

    def after_training(self, model: xgboost.Booster) -> xgboost.Booster:
        import ray.train

        metrics = {
            **self.last,
            "best_iteration": int(getattr(model, "best_iteration", self.last.get("round", 1) - 1)),
            "worker_data_seconds": self.data_seconds,
            "worker_train_seconds": time.perf_counter() - self.started - self.report_seconds,
            "worker_report_seconds": self.report_seconds,
            "rounds_run": int(self.last.get("round", 0)),
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                model.save_model(Path(tmp) / MODEL_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        return model


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shards of train/valid -> DMatrix -> distributed xgboost.train."""
    import ray.train

    preprocessor = Preprocessor.from_dict(config["preprocessor"])
    started = time.perf_counter()
    shards = {}
    for name in ("train", "valid"):
        frame = canonical_order(ray.train.get_dataset_shard(name).materialize().to_pandas())
        if name == "train" and config.get("missing_rate"):
            frame = with_missing_copy(frame, config["missing_rate"], config.get("seed", 0))
        shards[name] = xgboost.DMatrix(
            preprocessor.transform(frame), label=frame[preprocessor.label].to_numpy(), enable_categorical=True
        )
    data_seconds = time.perf_counter() - started
    xgboost.train(
        config["params"],
        shards["train"],
        num_boost_round=config["max_rounds"],
        evals=[(shards["train"], "train"), (shards["valid"], "valid")],
        early_stopping_rounds=config["early_stopping_rounds"],
        callbacks=[ReportEvery(config["report_every"], data_seconds)],
        verbose_eval=False,
    )


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by a hash of their content. Ray Data hands a shard's blocks over in the
    order its read tasks finish, so without this the seeded missing-group copy masked other rows
    each run and the same data and seed gave another model."""
    keys = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return frame.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def with_missing_copy(frame: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """The rows plus a copy with feature groups blanked at random (see data.record)."""
    import ray.train

    from data.record import mask_groups

    rank = ray.train.get_context().get_world_rank()
    return pd.concat([frame, mask_groups(frame, rate, seed * 1000 + rank)], ignore_index=True)


@dataclass
class TrainResult:
    predictor: TabularPredictor
    manifest: dict[str, Any]
    seconds: dict[str, float]
    best_iteration: int
    valid_metrics: dict[str, float]


def train(
    features: str | FeatureFolder, config: TabularConfig | None = None, storage_path: str | None = None
) -> TrainResult:
    """Fit the model on a feature folder (a path, or one already open) with XGBoostTrainer;
    calibrate on valid."""
    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    config = config or TabularConfig()
    folder = FeatureFolder.open(features)
    manifest = folder.manifest
    t0 = time.perf_counter()
    names = [f["name"] for f in manifest["features"]]
    label = manifest["label_column"]
    train_df = folder.read_split("train", [*names, label])
    if train_df[label].nunique() < 2:
        raise FeatureFolderError(f"{folder.uri}: train split needs both classes in {label!r}")
    preprocessor = Preprocessor.fit(train_df, manifest)
    positives = int(train_df[label].sum())
    spw = config.scale_pos_weight
    if spw == "auto":
        spw = (len(train_df) - positives) / positives
    datasets = {}
    for split in ("train", "valid"):
        files = folder.split_files(split)
        if not files:
            raise FeatureFolderError(f"{folder.uri}: split {split!r} has no rows")
        # Materialised before training: XGBoost holds the whole shard in memory anyway, and
        # the reads must not wait for CPUs that the training workers hold (2-CPU deadlock).
        datasets[split] = ray.data.read_parquet(
            files, filesystem=folder.fs, columns=[*names, label]
        ).materialize()
    trainer = XGBoostTrainer(
        train_fn_per_worker,
        train_loop_config={
            "preprocessor": preprocessor.to_dict(),
            "params": config.xgb_params(spw, preprocessor.columns),
            "missing_rate": config.missing_rate,
            "seed": config.seed,
            "max_rounds": config.max_rounds,
            "early_stopping_rounds": config.early_stopping_rounds,
            "report_every": config.report_every,
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        run_config=RunConfig(name=f"tabular-{int(time.time())}", storage_path=storage_path),
        datasets=datasets,
    )
    t1 = time.perf_counter()
    result = trainer.fit()
    t2 = time.perf_counter()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        booster = xgboost.Booster()
        booster.load_model(Path(directory) / MODEL_FILE)
    best = int(result.metrics.get("best_iteration", booster.num_boosted_rounds() - 1))
    booster = booster[: best + 1]  # drop the rounds early stopping looked past
    uncalibrated = TabularPredictor(booster, preprocessor, Calibrator("none"))
    valid_df = folder.read_split("valid", [*names, label])
    raw_valid = uncalibrated.predict_raw(valid_df)
    calibrator = Calibrator.fit(raw_valid, valid_df[label].to_numpy(), config.calibration)
    meta = {
        "features": names,
        "label": label,
        "manifest_source": manifest["source"],
        "calibration": calibrator.method,
        "best_iteration": best,
        "scale_pos_weight": spw,
        "config": config.model_dump(),
    }
    predictor = TabularPredictor(booster, preprocessor, calibrator, meta)
    seconds = {
        "prepare": t1 - t0,
        "fit": t2 - t1,
        "calibrate": time.perf_counter() - t2,
        "worker_data": float(result.metrics.get("worker_data_seconds", 0.0)),
        "worker_train": float(result.metrics.get("worker_train_seconds", 0.0)),
        "worker_report": float(result.metrics.get("worker_report_seconds", 0.0)),
    }
    valid_metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    log.info("tabular model: best round %d, %s", best + 1, {k: round(v, 1) for k, v in seconds.items()})
    return TrainResult(predictor, manifest, seconds, best, valid_metrics)


# --- the training reference (for drift checks) -------------------------------------------------

REFERENCE_ROWS = 2000  # enough for Evidently's tests; note descriptors cost ~2.5 ms a row
RISK_COLUMN = "risk"


def reference_frame(
    predictor: TabularPredictor,
    train: pd.DataFrame,
    text_column: str | None = None,
    max_rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> pd.DataFrame:
    """A seeded sample of the train rows the model saw (never the missing-group copies): its
    feature columns (booleans as 0/1, categories as text), the note descriptors when the rows
    have a note column, and the model's own risk. No ids, no label, no note text."""
    from data.descriptors import descriptor_frame

    sample = train.sample(n=max_rows, random_state=seed) if len(train) > max_rows else train
    sample = sample.reset_index(drop=True)
    names = predictor.feature_names
    columns: dict[str, pd.Series] = {}
    for name in names:
        if name in predictor.preprocessor.boolean:
            columns[name] = pd.to_numeric(sample[name].astype(object), errors="coerce").astype("float64")
        elif name in predictor.preprocessor.categories:
            columns[name] = sample[name].astype(object).where(sample[name].notna(), None)
        else:
            columns[name] = pd.to_numeric(sample[name], errors="coerce").astype("float64")
    out = pd.DataFrame(columns, index=sample.index)
    if text_column and text_column in sample.columns:
        out = pd.concat([out, descriptor_frame(sample[text_column])], axis=1)
    out[RISK_COLUMN] = predictor.predict_proba(sample[names]).astype("float64")
    return out
