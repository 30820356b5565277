"""One trial of the XGBoost search, and the data every trial shares (see tune.xgboost_search).

A trial is a plain in-process `xgboost.train` on 1 CPU with the production model's parameters and
`Preprocessor`; the driver reads and encodes the splits once (`load_trial_data`) from the feature
folder it opened, and Tune hands that to every trial. Ray is imported only inside a trial.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost

from data.featureset import FeatureFolder, FeatureFolderError
from ml.tabular import MODEL_FILE, Preprocessor, TabularConfig

log = logging.getLogger(__name__)

STATE_FILE = "trial_state.json"
METRIC = "valid_auroc"
TIME_ATTR = "rounds"
# The tuned TabularConfig fields; everything else keeps its TabularConfig default.
TUNED = (
    "learning_rate",
    "max_depth",
    "min_child_weight",
    "subsample",
    "colsample_bytree",
    "reg_lambda",
    "scale_pos_weight",
)
# Constant settings that travel in every trial's config.
FIXED = ("max_rounds", "report_every", "checkpoint_every", "early_stopping_rounds", "seed")


@dataclass
class TrialData:
    """The encoded train and valid splits, built once by the driver and shared by all trials."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_valid: pd.DataFrame
    y_valid: np.ndarray
    auto_scale_pos_weight: float

    def scale_pos_weight(self, choice: float | str | None) -> float | None:
        return self.auto_scale_pos_weight if choice == "auto" else choice  # type: ignore[return-value]


def load_trial_data(features: str | FeatureFolder) -> TrialData:
    """Read train/valid, fit the preprocessor on train only, encode both. Test is never read."""
    folder = FeatureFolder.open(features)
    names, label = folder.feature_names, folder.label_column
    train = folder.read_split("train", [*names, label])
    valid = folder.read_split("valid", [*names, label])
    for split, frame in (("train", train), ("valid", valid)):
        if frame[label].nunique() < 2:
            raise FeatureFolderError(f"{folder.uri}: split {split!r} needs both classes in {label!r}")
    preprocessor = Preprocessor.fit(train, folder.manifest)
    positives = int(train[label].sum())
    return TrialData(
        x_train=preprocessor.transform(train),
        y_train=train[label].to_numpy(),
        x_valid=preprocessor.transform(valid),
        y_valid=valid[label].to_numpy(),
        auto_scale_pos_weight=(len(train) - positives) / positives,
    )


def trial_tabular_config(config: dict[str, Any], **overrides: Any) -> TabularConfig:
    """The TabularConfig of a trial's config (tuned values + the fixed search settings)."""
    values = {k: config[k] for k in TUNED if k in config}
    values.update(
        {k: config[k] for k in ("max_rounds", "early_stopping_rounds", "seed") if k in config},
        cpus_per_worker=1,
    )
    values.update(overrides)
    return TabularConfig(**values)


@dataclass
class TrialState:
    """Where a trial is: saved with every checkpoint so a resumed trial continues exactly."""

    rounds: int = 0
    best_auroc: float = -math.inf
    best_round: int = 0
    since_best: int = 0
    last_auroc: float = math.nan
    last_logloss: float = math.nan

    def metrics(self, max_rounds: int, patience: int) -> dict[str, Any]:
        early = self.since_best >= patience
        return {
            TIME_ATTR: self.rounds,
            METRIC: self.best_auroc,
            "best_round": self.best_round,
            "valid_auroc_last": self.last_auroc,
            "valid_logloss_last": self.last_logloss,
            "early_stopped": early,
            "finished": early or self.rounds >= max_rounds,
        }


# report(metrics, booster, state, checkpoint?)
Reporter = Callable[[dict[str, Any], xgboost.Booster, TrialState, bool], None]


class _Progress(xgboost.callback.TrainingCallback):
    """Tracks the best validation AUROC, stops early, reports every N rounds and at the end.

    A report carries the booster as checkpoint when `checkpoint_every` rounds have passed since
    the last one, and at the end: checkpoints are for resuming, reports are for ASHA.
    """

    def __init__(self, state: TrialState, config: dict[str, Any], report: Reporter | None):
        self.state, self.report = state, report
        self.max_rounds, self.patience = int(config["max_rounds"]), int(config["early_stopping_rounds"])
        self.every = int(config.get("report_every", 10))
        self.checkpoint_every = int(config.get("checkpoint_every", 50))
        self.checkpointed = state.rounds

    def after_iteration(self, model: xgboost.Booster, epoch: int, evals_log: dict) -> bool:
        s = self.state
        s.rounds += 1
        s.last_auroc = float(evals_log["valid"]["auc"][-1])
        s.last_logloss = float(evals_log["valid"]["logloss"][-1])
        if s.last_auroc > s.best_auroc:
            s.best_auroc, s.best_round, s.since_best = s.last_auroc, s.rounds, 0
        else:
            s.since_best += 1
        metrics = s.metrics(self.max_rounds, self.patience)
        if self.report and (s.rounds % self.every == 0 or metrics["finished"]):
            checkpoint = metrics["finished"] or s.rounds - self.checkpointed >= self.checkpoint_every
            if checkpoint:
                self.checkpointed = s.rounds
            self.report(metrics, model, s, checkpoint)
        return bool(metrics["early_stopped"])


def fit_trial(
    config: dict[str, Any],
    data: TrialData,
    report: Reporter | None = None,
    booster: xgboost.Booster | None = None,
    state: TrialState | None = None,
) -> tuple[xgboost.Booster, TrialState]:
    """Train one configuration in this process (continuing `booster` at `state` when given)."""
    state = state or TrialState()
    tabular = trial_tabular_config(config)
    max_rounds, patience = tabular.max_rounds, tabular.early_stopping_rounds
    if state.rounds >= max_rounds or state.since_best >= patience:  # finished before the restore
        if report and booster is not None:
            report(state.metrics(max_rounds, patience), booster, state, True)
        return booster, state  # type: ignore[return-value]
    params = tabular.xgb_params(data.scale_pos_weight(tabular.scale_pos_weight))
    dtrain = xgboost.DMatrix(data.x_train, label=data.y_train, enable_categorical=True)
    dvalid = xgboost.DMatrix(data.x_valid, label=data.y_valid, enable_categorical=True)
    progress = _Progress(
        state, {**config, "max_rounds": max_rounds, "early_stopping_rounds": patience}, report
    )
    booster = xgboost.train(
        params,
        dtrain,
        num_boost_round=max_rounds - state.rounds,
        evals=[(dvalid, "valid")],  # only valid: train metrics would cost time and are not used
        callbacks=[progress],
        xgb_model=booster,  # a restored trial continues its checkpointed booster
        verbose_eval=False,
    )
    return booster, state


def _tune_report(
    metrics: dict[str, Any], booster: xgboost.Booster, state: TrialState, checkpoint: bool
) -> None:
    import ray.tune

    if not checkpoint:
        ray.tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(Path(tmp) / MODEL_FILE)
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state.__dict__))
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def xgboost_trial(config: dict[str, Any], data: TrialData) -> None:
    """The Tune function trainable: continue from the trial's checkpoint if there is one."""
    import ray.tune

    booster, state = None, None
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            booster = xgboost.Booster()
            booster.load_model(Path(directory) / MODEL_FILE)
            state = TrialState(**json.loads((Path(directory) / STATE_FILE).read_text()))
        log.info("trial %s resumes at round %d", ray.tune.get_context().get_trial_id(), state.rounds)
    fit_trial(config, data, _tune_report, booster, state)
