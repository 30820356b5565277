"""Hyperparameter search for the tabular XGBoost model with Ray Tune (random search + ASHA).

One trial = one plain in-process `xgboost.train` on 1 CPU (nthread=1), with the same
parameters `ml.tabular.TabularConfig.xgb_params` gives the production model and the same
`Preprocessor` (fitted on the train split only). Why not `XGBoostTrainer` inside each trial:
a nested Ray Train run costs a controller actor, a worker group, XGBoost's collective and Ray
Data reads per trial (several seconds of start-up, and CPUs that the reads wait for: on 2 CPUs
that deadlocks or serialises everything), while data-parallel XGBoost only pays off when one
trial's data does not fit one process. Readmission tables fit easily, so the cluster's CPUs
are better spent as one trial per CPU. The split data is read and encoded once by the driver
and put in the object store once (`tune.with_parameters`); every trial reads it from there.

Search space (`search_space()`): learning_rate loguniform(0.01, 0.3), max_depth 3..8,
min_child_weight loguniform(1, 50), subsample uniform(0.5, 1), colsample_bytree
uniform(0.3, 1), reg_lambda loguniform(0.1, 50), scale_pos_weight in {None, "auto"}. The
first trial is the current `TabularConfig` default, so a search can only improve on it.

Each trial boosts up to `max_rounds` rounds with early stopping on validation AUROC
(`early_stopping_rounds` without improvement), and reports to Tune every `report_every`
rounds (a report is a round trip to the driver, not free on a busy 2-core machine, so not
every round); every `checkpoint_every` rounds and at its end a report carries the booster
and the trial's state as checkpoint (for resuming). The reported `valid_auroc` is the best so
far in the trial, `best_round` its round. ASHA (`AsyncHyperBandScheduler`) stops trials on
`valid_auroc` (mode max) with `time_attr="rounds"` (boosting rounds): rungs at
grace_period * reduction_factor^k rounds; at a rung a trial continues only if it is in the top
1/reduction_factor of the trials that reached that rung so far (the first arrivals always
continue). Grace period default 2 x report_every (20 rounds), reduction factor 3: rungs at 20,
60, 180 (and 540 if max_rounds allows). Like any successive halving, it favours configurations
that learn fast (high learning rates) over slow starters. Trials run `max_concurrent` at a
time, default the cluster's CPUs (1 CPU and nthread=1 each), and reuse their worker processes.

The experiment lives in `<data dir>/tune/<name>` with `search.json` (our settings, the MLflow
parent run) beside Tune's own state, so resuming restores it with `Tuner.restore`: finished
trials are kept, interrupted ones continue from their last checkpoint (at most
`checkpoint_every` rounds are redone; from scratch if they had none), errored ones are retried,
the remaining samples are drawn. Ctrl+C (SIGINT) ends a search that way: Tune saves its state
and `run_search` raises SearchInterrupted. ASHA's rung records are not part of Tune's saved
state: after a restore, trials are judged against the results that arrive after it. Resuming
a search that already finished (result.json written) returns its result.

MLflow (experiment = the model's, e.g. `readmission-tabular`): the search is a parent run, each
trial a child run (parameters, `valid_auroc` per
reported round, rounds run, why it stopped), all written by the driver from a Tune callback:
one writer, so a sqlite tracking store is never written by many processes at once. The best
configuration is then retrained by `ml.experiment.train_tabular` (Ray Train, calibrated,
evaluated on test, registered pending approval) with `max_rounds` = the trial's best round, and
the registered version is tagged with its search provenance. Nothing is served until someone runs
`python -m ml registry approve` on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import ray.tune
import xgboost
from pydantic import BaseModel, Field

from data.config import Settings
from data.featureset import FeatureFolderError, read_split_pandas, verify_feature_folder
from ml.tabular import MODEL_FILE, Preprocessor, TabularConfig

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
SEARCH_FILE = "search.json"
RESULT_FILE = "result.json"
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


class SearchError(ValueError):
    """A search that cannot be started or resumed as asked (user error, exit code 2)."""


class SearchInterrupted(RuntimeError):
    """The search stopped before all trials finished (Ctrl+C, SIGUSR1); it can be resumed."""

    def __init__(self, name: str, path: Path):
        super().__init__(
            f"search {name!r} was interrupted; its state is in {path}. "
            f"Resume with: python -m tune xgboost --resume --name {name}"
        )
        self.name = name
        self.path = path


class SearchConfig(BaseModel):
    """Everything one search depends on; saved as search.json in the experiment folder."""

    features: str
    name: str
    num_samples: int = Field(16, ge=1)
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once; None = cluster CPUs.")
    max_rounds: int = Field(400, ge=1, description="Boosting rounds cap per trial (ASHA max_t).")
    report_every: int = Field(10, ge=1, description="Report to Tune every N rounds.")
    checkpoint_every: int = Field(
        50, ge=1, description="Checkpoint the booster every N rounds (at a report)."
    )
    grace_period: int | None = Field(None, ge=1, description="ASHA: rounds before a first cut.")
    reduction_factor: float = Field(3.0, gt=1)
    early_stopping_rounds: int = Field(30, ge=1)
    seed: int = 0
    include_default: bool = Field(True, description="First trial = TabularConfig defaults.")
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="Configurations to try next (e.g. the champion's), all TUNED keys."
    )
    # = ml.experiment.TABULAR_MODEL; not imported here, so trial workers do not load mlflow.pyfunc
    model_name: str = "readmission-tabular"
    register_best: bool = Field(True, description="Register the retrained best model (pending approval).")
    n_boot: int = Field(1000, ge=10)
    top_k: int = Field(5, ge=1)

    @property
    def asha_grace(self) -> int:
        return min(self.grace_period or 2 * self.report_every, self.max_rounds)


def search_space() -> dict[str, Any]:
    """The tuned hyperparameters (names are TabularConfig fields); ranges in the module doc."""
    return {
        "learning_rate": ray.tune.loguniform(0.01, 0.3),
        "max_depth": ray.tune.randint(3, 9),  # upper bound exclusive: 3..8
        "min_child_weight": ray.tune.loguniform(1.0, 50.0),
        "subsample": ray.tune.uniform(0.5, 1.0),
        "colsample_bytree": ray.tune.uniform(0.3, 1.0),
        "reg_lambda": ray.tune.loguniform(0.1, 50.0),
        "scale_pos_weight": ray.tune.choice([None, "auto"]),
    }


def default_point() -> dict[str, Any]:
    """The current production defaults as a point of the search space."""
    defaults = TabularConfig()
    return {name: getattr(defaults, name) for name in TUNED}


def tune_root(settings: Settings | None = None) -> Path:
    return (settings or Settings.from_env()).data_dir.resolve() / TUNE_DIR


def check_resumable(name: str, settings: Settings | None = None) -> Path:
    """The folder of search `name` if it can be resumed, else a SearchError (cheap: no Ray needed)."""
    path = tune_root(settings) / name
    if not (path / SEARCH_FILE).exists() or not ray.tune.Tuner.can_restore(str(path)):
        raise SearchError(f"no resumable search {name!r} in {path.parent}")
    return path


def load_saved_search(name: str, settings: Settings | None = None) -> tuple[Path, dict[str, Any]]:
    """(folder, search.json) of a resumable search: its config, MLflow experiment and parent run."""
    path = check_resumable(name, settings)
    return path, json.loads((path / SEARCH_FILE).read_text())


def save_search(path: Path, config: BaseModel, experiment_id: str, parent_run_id: str) -> None:
    """search.json: what `load_saved_search` reads back to resume the search."""
    record = {
        "config": config.model_dump(),
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (path / SEARCH_FILE).write_text(json.dumps(record, indent=2))


def check_new(name: str, settings: Settings | None = None) -> Path:
    """The folder for a new search `name`; a SearchError if a search of that name exists."""
    path = tune_root(settings) / name
    if path.exists():
        raise SearchError(f"{path} already exists: pick another --name, or --resume it")
    return path


def latest_experiment(settings: Settings | None = None) -> str:
    """The most recently started search under the data dir (for `--resume` without a name)."""
    root = tune_root(settings)
    found = sorted(root.glob(f"*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise SearchError(f"no search to resume under {root}")
    return found[-1].parent.name


# --------------------------------------------------------------------------- one trial


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


def load_trial_data(features: str) -> TrialData:
    """Read train/valid, fit the preprocessor on train only, encode both. Test is never read."""
    manifest = verify_feature_folder(features)
    names = [f["name"] for f in manifest["features"]]
    label = manifest["label_column"]
    train = read_split_pandas(features, "train", [*names, label])
    valid = read_split_pandas(features, "valid", [*names, label])
    for split, frame in (("train", train), ("valid", valid)):
        if frame[label].nunique() < 2:
            raise FeatureFolderError(f"{features}: split {split!r} needs both classes in {label!r}")
    preprocessor = Preprocessor.fit(train, manifest)
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
    if not checkpoint:
        ray.tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(Path(tmp) / MODEL_FILE)
        (Path(tmp) / STATE_FILE).write_text(json.dumps(state.__dict__))
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def xgboost_trial(config: dict[str, Any], data: TrialData) -> None:
    """The Tune function trainable: continue from the trial's checkpoint if there is one."""
    booster, state = None, None
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            booster = xgboost.Booster()
            booster.load_model(Path(directory) / MODEL_FILE)
            state = TrialState(**json.loads((Path(directory) / STATE_FILE).read_text()))
        log.info("trial %s resumes at round %d", ray.tune.get_context().get_trial_id(), state.rounds)
    fit_trial(config, data, _tune_report, booster, state)


# --------------------------------------------------------------------------- MLflow


def _stop_reason(result: dict[str, Any], max_t: int, time_attr: str = TIME_ATTR) -> str:
    """Why a trial ended: its own early stopping, the cap on `time_attr`, else the scheduler."""
    if not result:
        return "no result"
    if result.get("early_stopped"):
        return "early_stopping"
    if result.get(time_attr, 0) >= max_t:
        return f"max_{time_attr}"
    return "asha"


class MlflowSearchLogger(ray.tune.Callback):
    """Parent run = the search; one child run per trial. Runs in the driver only (one writer).

    A child gets the trial's `params` from its config, every reported `metrics` value stepped by
    `time_attr`, and at the end `<time_attr>_run`, `best_<first metric>` (per `mode`), `best_round`
    when reported, and a `stopped_by` tag. Generic over the model: the note-model search uses it
    with its own params, metrics and time attribute.

    Pickled with the experiment (Tune keeps its callbacks for `Tuner.restore`), so it holds ids
    only; a restored trial finds its existing child run by tag instead of making a second one.
    """

    def __init__(
        self,
        experiment_id: str,
        parent_run_id: str,
        search_name: str,
        max_t: int,
        params: Sequence[str] = (*TUNED, *FIXED),
        metrics: Sequence[str] = (METRIC, "valid_auroc_last", "valid_logloss_last"),
        time_attr: str = TIME_ATTR,
        mode: str = "max",
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search_name = search_name
        self.max_t = max_t
        self.params, self.metrics = tuple(params), tuple(metrics)
        self.time_attr, self.mode = time_attr, mode
        self._runs: dict[str, str] = {}
        self._best: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_best": {}}

    @staticmethod
    def _client() -> Any:
        from mlflow import MlflowClient

        from ml import registry

        registry.configure()
        return MlflowClient()

    def _child(self, trial: Any) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        from mlflow.entities import Param

        client = self._client()
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
            f"AND tags.tune_trial_id = '{trial.trial_id}'",
            max_results=1,
        )
        if found:  # a restored trial: same child run
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial.trial_id}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "tune_trial_id": trial.trial_id,
                    "tune_experiment": self.search_name,
                    "kind": "tune-trial",
                },
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=[Param(k, str(trial.config.get(k))) for k in self.params])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._child(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        step, now = int(result.get(self.time_attr, 0)), int(time.time() * 1000)
        values = {k: result.get(k) for k in self.metrics}
        first = values.get(self.metrics[0])
        if _finite(first):
            best = self._best.get(trial.trial_id)
            better = best is None or (first > best if self.mode == "max" else first < best)
            self._best[trial.trial_id] = float(first) if better else best  # type: ignore[assignment]
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _finite(v)]
        self._client().log_batch(self._child(trial), metrics=metrics)

    def _finish(self, trial: Any, status: str) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client()
        run_id = self._child(trial)
        result = trial.last_result or {}
        now = int(time.time() * 1000)
        finals = {f"{self.time_attr}_run": result.get(self.time_attr, 0)}
        if trial.trial_id in self._best:
            finals[f"best_{self.metrics[0]}"] = self._best[trial.trial_id]
        if "best_round" in result:
            finals["best_round"] = result["best_round"]
        reason = "error" if status == "FAILED" else _stop_reason(result, self.max_t, self.time_attr)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in finals.items() if _finite(v)],
            tags=[RunTag("stopped_by", reason)],
        )
        client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- the search


@dataclass
class SearchOutcome:
    config: SearchConfig
    path: Path
    experiment_id: str
    parent_run_id: str
    trials: pd.DataFrame  # one row per trial: id, status, tuned params, metrics
    seconds: float
    resumed: bool


def _trial_rows(grid: Any, config: SearchConfig) -> pd.DataFrame:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        cfg = result.config or {}
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
                "error": result.error is not None,
                METRIC: metrics.get(METRIC, math.nan),
                "best_round": metrics.get("best_round", 0),
                "rounds_run": metrics.get(TIME_ATTR, 0),
                "stopped_by": "error" if result.error else _stop_reason(metrics, config.max_rounds),
                **{k: cfg.get(k) for k in TUNED},
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(METRIC, ascending=False, na_position="last").reset_index(drop=True)


def _parent_run(config: SearchConfig, path: Path) -> tuple[str, str]:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from ml import registry

    experiment_id = registry.experiment(config.model_name)
    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"tune-{config.name}",
        tags={"kind": "tune-search", "tune_experiment": config.name, "tune_path": str(path)},
    )
    values = {**config.model_dump(), "scheduler": "ASHA", "search": "random", "asha_grace": config.asha_grace}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
    return experiment_id, run.info.run_id


def run_search(
    config: SearchConfig | None = None,
    resume_name: str | None = None,
    settings: Settings | None = None,
    callbacks: Sequence[ray.tune.Callback] = (),
) -> SearchOutcome:
    """Run a new search (`config`) or resume an interrupted one (`resume_name`).

    Needs Ray initialised. Raises SearchInterrupted if the search stops before all trials end.
    """
    from mlflow import MlflowClient

    from ml import registry

    if (config is None) == (resume_name is None):
        raise ValueError("give either a new search config or the name of a search to resume")
    registry.configure(settings)
    client = MlflowClient()
    if resume_name is not None:
        path, saved = load_saved_search(resume_name, settings)
        config = SearchConfig(**saved["config"])
        experiment_id, parent_run_id = saved["experiment_id"], saved["parent_run_id"]
        client.update_run(parent_run_id, status="RUNNING")
    else:
        assert config is not None
        path = check_new(config.name, settings)
        verify_feature_folder(config.features)  # before anything is created

    # Tune warns when trial checkpoints force experiment snapshots more often than every 5 s;
    # here a snapshot is a small local JSON write, so that is cheap and the warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = time.perf_counter()
    data = load_trial_data(config.features)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(xgboost_trial, data=data), {"cpu": 1})
    log.info("data for %s: %d train / %d valid rows, %.1f s", config.name, len(data.y_train),
             len(data.y_valid), time.perf_counter() - started)  # fmt: skip
    if resume_name is not None:
        tuner = ray.tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        log.info("resuming search %s from %s", config.name, path)
    else:
        experiment_id, parent_run_id = _parent_run(config, path)
        tuner = _new_tuner(config, trainable, path, experiment_id, parent_run_id, callbacks)
        save_search(path, config, experiment_id, parent_run_id)
    grid = fit_tuner(tuner, client, parent_run_id)
    seconds = time.perf_counter() - started
    if search_interrupted(grid, config.num_samples):
        client.set_terminated(parent_run_id, "KILLED")
        raise SearchInterrupted(config.name, path)
    trials = _trial_rows(grid, config)
    return SearchOutcome(config, path, experiment_id, parent_run_id, trials, seconds, resume_name is not None)


def fit_tuner(tuner: ray.tune.Tuner, client: Any, parent_run_id: str) -> Any:
    """`tuner.fit()` keeping the terminal's signal handlers; a crash marks the parent run FAILED."""
    try:
        with restoring_signal_handlers():
            return tuner.fit()
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise


@contextlib.contextmanager
def restoring_signal_handlers() -> Iterator[None]:
    """Tune installs SIGINT/SIGUSR1 handlers for its run and leaves them installed afterwards:
    a later Ctrl+C (during the retrain) would then only set an event nobody reads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def search_interrupted(grid: Any, num_samples: int) -> bool:
    """Did the search stop before every trial ended? (Tune returns normally on SIGINT/SIGUSR1.)

    Trials running at the interrupt come back TERMINATED in memory (saved as RUNNING, so a
    restore continues them): what tells them apart is that their last result is not `done`,
    which every trial that ended (finished or stopped by ASHA) has.
    """
    if len(grid) < num_samples:
        return True
    return any(r.error is None and not (r.metrics or {}).get("done") for r in grid)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _new_tuner(
    config: SearchConfig,
    trainable: Any,
    path: Path,
    experiment_id: str,
    parent_run_id: str,
    callbacks: Sequence[ray.tune.Callback],
) -> ray.tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    concurrent = config.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)))
    fixed = {k: getattr(config, k) for k in FIXED}
    points = [default_point()] if config.include_default else []
    points += [dict(p) for p in config.points]
    logger = MlflowSearchLogger(
        experiment_id, parent_run_id, config.name, config.max_rounds
    )  # xgboost defaults
    return ray.tune.Tuner(
        trainable,
        param_space={**search_space(), **fixed},
        tune_config=ray.tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=config.num_samples,
            # The limit goes on the generator itself: Tune ignores `max_concurrent_trials` when the
            # search algorithm is a BasicVariantGenerator passed in (it only warns).
            search_alg=BasicVariantGenerator(
                points_to_evaluate=points, max_concurrent=concurrent, random_state=config.seed
            ),
            scheduler=ASHAScheduler(
                time_attr=TIME_ATTR,
                max_t=config.max_rounds,
                grace_period=config.asha_grace,
                reduction_factor=config.reduction_factor,
            ),
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a new worker process per trial costs seconds on a busy machine
        ),
        run_config=ray.tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            callbacks=[logger, *callbacks],
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            failure_config=ray.tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


# --------------------------------------------------------------------------- summary, retrain


_SHORT = {
    "learning_rate": "lr",
    "min_child_weight": "min_child_w",
    "colsample_bytree": "colsample",
    "scale_pos_weight": "pos_weight",
    "best_round": "best_rnd",
    "rounds_run": "rounds",
}


def format_table(trials: pd.DataFrame, top_k: int = 5) -> str:
    """The first `top_k` rows (sort them best first) of a trials frame as a fixed-width table."""
    if trials.empty:
        return "(no trials)"

    def cell(value: Any) -> str:
        if value is None or _is_nan(value):
            return "-"
        if isinstance(value, float | np.floating):
            return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"
        return str(value)

    cols = list(trials.columns)
    rows = [[_SHORT.get(c, c) for c in cols]]
    rows += [[cell(r[c]) for c in cols] for r in trials.head(top_k).to_dict("records")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows)


def summary_table(trials: pd.DataFrame, top_k: int = 5) -> str:
    """The best XGBoost trials: id, valid AUROC, best and last round, why it stopped, params."""
    cols = ["trial_id", METRIC, "best_round", "rounds_run", "stopped_by", *TUNED]
    return format_table(trials[[c for c in cols if c in trials.columns]], top_k)


def retrain_best(outcome: SearchOutcome) -> dict[str, Any]:
    """Train the best trial's configuration the production way; register and tag it."""
    from mlflow import MlflowClient

    from ml.experiment import train_tabular

    config = outcome.config
    ok = outcome.trials[~outcome.trials["error"] & outcome.trials[METRIC].notna()]
    if ok.empty:
        raise RuntimeError(f"search {config.name!r}: no trial produced a {METRIC}")
    best = ok.iloc[0]
    params = {k: (None if _is_nan(best[k]) else best[k]) for k in TUNED}
    params["max_depth"] = int(params["max_depth"])
    fixed = {"early_stopping_rounds": config.early_stopping_rounds, "seed": config.seed}
    tabular = trial_tabular_config({**params, **fixed, "max_rounds": int(best["best_round"])})
    metrics = train_tabular(
        config.features,
        tabular,
        register=config.register_best,
        model_name=config.model_name,
        n_boot=config.n_boot,
        storage_path=str(outcome.path / "retrain"),
    )
    client = MlflowClient()
    client.update_run(metrics["run_id"], name=f"tune-{config.name}-best")
    provenance = {
        "tune_experiment": config.name,
        "tune_parent_run_id": outcome.parent_run_id,
        "tune_trial_id": str(best["trial_id"]),
        "tune_num_trials": str(len(outcome.trials)),
        "tune_best_valid_auroc": f"{best[METRIC]:.6f}",
    }
    run_tags = {**provenance, "mlflow.parentRunId": outcome.parent_run_id, "kind": "tune-retrain"}
    for key, value in run_tags.items():
        client.set_tag(metrics["run_id"], key, value)
    registered = metrics.get("registered")
    if registered:
        for key, value in provenance.items():
            client.set_model_version_tag(registered["name"], registered["version"], key, value)
    return {"best": best, "params": params, "tabular": tabular, "metrics": metrics}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def tune_xgboost(
    config: SearchConfig | None = None,
    resume_name: str | None = None,
    settings: Settings | None = None,
    callbacks: Sequence[ray.tune.Callback] = (),
    on_summary: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Search, summarise, retrain + register the best; the result is also saved as result.json.

    Resuming a search that already finished returns its saved result without doing anything.
    """
    if resume_name is not None:
        done = tune_root(settings) / resume_name / RESULT_FILE
        if done.exists():
            log.info("search %s already finished; its result is in %s", resume_name, done)
            return json.loads(done.read_text())
    outcome = run_search(config, resume_name, settings, callbacks)
    cfg, trials = outcome.config, outcome.trials
    table = summary_table(trials, cfg.top_k)
    if on_summary:
        on_summary(table)
    else:
        log.info("best trials of %s:\n%s", cfg.name, table)
    retrained = retrain_best(outcome)
    metrics, best = retrained["metrics"], retrained["best"]
    rounds_run = int(trials["rounds_run"].sum())
    result = {
        "experiment": cfg.name,
        "path": str(outcome.path),
        "parent_run_id": outcome.parent_run_id,
        "trials": len(trials),
        "trials_errored": int(trials["error"].sum()),
        "resumed": outcome.resumed,
        "search_seconds": round(outcome.seconds, 1),
        "trials_per_min": len(trials) / outcome.seconds * 60 if not outcome.resumed else None,
        "rounds_run": rounds_run,
        "rounds_fraction_run": rounds_run / (len(trials) * cfg.max_rounds),
        "stopped_by": {str(k): int(v) for k, v in trials["stopped_by"].value_counts().items()},
        "best_trial_id": str(best["trial_id"]),
        "best_params": {k: _jsonable(v) for k, v in retrained["params"].items()},
        "best_valid_auroc": float(best[METRIC]),
        "best_round": int(best["best_round"]),
        "top": [{k: _jsonable(v) for k, v in r.items()} for r in trials.head(cfg.top_k).to_dict("records")],
        "retrain_run_id": metrics["run_id"],
        "test_auroc": metrics["test_auroc"],
        "test_auroc_ci": list(metrics["test_auroc_ci"]),
        "registered_version": (metrics.get("registered") or {}).get("version"),
        "registered": metrics.get("registered"),
    }
    _finish_parent(outcome, result)
    (outcome.path / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    return result


def _finish_parent(outcome: SearchOutcome, result: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient()
    now = int(time.time() * 1000)
    values = {k: result[k] for k in ("trials", "rounds_fraction_run", "best_valid_auroc", "test_auroc",
                                      "trials_per_min", "search_seconds")}  # fmt: skip
    tags = {"best_trial_id": result["best_trial_id"], "retrain_run_id": result["retrain_run_id"]}
    if result["registered_version"]:
        tags["registered_version"] = str(result["registered_version"])
    client.log_batch(
        outcome.parent_run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"  # hyperparameters and scores only: no patient data
        outcome.trials.to_csv(table, index=False)
        client.log_artifact(outcome.parent_run_id, str(table))
    client.set_terminated(outcome.parent_run_id, "FINISHED")
