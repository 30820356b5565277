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

The feature folder is opened once (`data.featureset.FeatureFolder`, by the CLI or here) and that
object goes to the trial data and the retrain. The parts: one trial and its data in
`tune.xgboost_trial` (what trial workers import), the MLflow callback in `tune.mlflow_logger`,
search folders, resume and interrupts in `tune.experiments` (shared with the note-model search);
this module drives the search, summarises it and retrains the best.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import ray.tune
from pydantic import BaseModel, Field

from data.config import Settings
from data.featureset import FeatureFolder
from ml.tabular import TabularConfig
from tune.experiments import (
    RESULT_FILE,
    SEARCH_FILE,
    TUNE_DIR,
    SearchError,
    SearchInterrupted,
    check_new,
    check_resumable,
    fit_tuner,
    format_table,
    is_nan,
    latest_experiment,
    load_saved_search,
    restoring_signal_handlers,
    save_search,
    search_interrupted,
    trial_dirname,
    tune_root,
)
from tune.mlflow_logger import MlflowSearchLogger, finite, stop_reason
from tune.xgboost_trial import (
    FIXED,
    METRIC,
    STATE_FILE,
    TIME_ATTR,
    TUNED,
    TrialData,
    TrialState,
    fit_trial,
    load_trial_data,
    trial_tabular_config,
    xgboost_trial,
)

# The names this module had before it was split (tune.experiments, tune.mlflow_logger,
# tune.xgboost_trial) still import from here.
__all__ = [
    "FIXED",
    "METRIC",
    "RESULT_FILE",
    "SEARCH_FILE",
    "STATE_FILE",
    "TIME_ATTR",
    "TUNED",
    "TUNE_DIR",
    "MlflowSearchLogger",
    "SearchConfig",
    "SearchError",
    "SearchInterrupted",
    "SearchOutcome",
    "TrialData",
    "TrialState",
    "check_new",
    "check_resumable",
    "default_point",
    "fit_trial",
    "fit_tuner",
    "format_table",
    "latest_experiment",
    "load_saved_search",
    "load_trial_data",
    "restoring_signal_handlers",
    "retrain_best",
    "run_search",
    "save_search",
    "search_interrupted",
    "search_space",
    "summary_table",
    "trial_dirname",
    "trial_tabular_config",
    "tune_root",
    "tune_xgboost",
    "xgboost_trial",
]

log = logging.getLogger(__name__)


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
    features: FeatureFolder  # opened once by the search; the retrain reads the same


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
                "stopped_by": "error" if result.error else stop_reason(metrics, config.max_rounds, TIME_ATTR),
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
    features: FeatureFolder | None = None,
) -> SearchOutcome:
    """Run a new search (`config`) or resume an interrupted one (`resume_name`).

    `features` is the config's feature folder if the caller has opened it already (the CLI does,
    to refuse bad input before Ray starts); else it is opened here. Needs Ray initialised. Raises
    SearchInterrupted if the search stops before all trials end.
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
    else:
        assert config is not None
        path = check_new(config.name, settings)
    folder = open_features(config, features)  # before anything is created or resumed
    if resume_name is not None:
        experiment_id, parent_run_id = saved["experiment_id"], saved["parent_run_id"]
        client.update_run(parent_run_id, status="RUNNING")

    # Tune warns when trial checkpoints force experiment snapshots more often than every 5 s;
    # here a snapshot is a small local JSON write, so that is cheap and the warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = time.perf_counter()
    data = load_trial_data(folder)
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
    resumed = resume_name is not None
    return SearchOutcome(config, path, experiment_id, parent_run_id, trials, seconds, resumed, folder)


def open_features(config: SearchConfig, features: FeatureFolder | None = None) -> FeatureFolder:
    """The search's feature folder: `features` if already open (it must be the one the config
    names, which search.json keeps for a resume), else the config's, opened now."""
    if features is None:
        return FeatureFolder.open(config.features)
    if features.uri != config.features:
        raise SearchError(f"the open feature folder {features.uri} is not the search's {config.features}")
    return features


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
        experiment_id,
        parent_run_id,
        config.name,
        config.max_rounds,
        params=(*TUNED, *FIXED),
        metrics=(METRIC, "valid_auroc_last", "valid_logloss_last"),
        time_attr=TIME_ATTR,
    )
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
    params = {k: (None if is_nan(best[k]) else best[k]) for k in TUNED}
    params["max_depth"] = int(params["max_depth"])
    fixed = {"early_stopping_rounds": config.early_stopping_rounds, "seed": config.seed}
    tabular = trial_tabular_config({**params, **fixed, "max_rounds": int(best["best_round"])})
    metrics = train_tabular(
        outcome.features,
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
    features: FeatureFolder | None = None,
) -> dict[str, Any]:
    """Search, summarise, retrain + register the best; the result is also saved as result.json.

    The feature folder is opened once (or given open, as `features`): the trials' data and the
    retrain read it. Resuming a search that already finished returns its saved result without
    doing anything.
    """
    if resume_name is not None:
        done = tune_root(settings) / resume_name / RESULT_FILE
        if done.exists():
            log.info("search %s already finished; its result is in %s", resume_name, done)
            return json.loads(done.read_text())
    outcome = run_search(config, resume_name, settings, callbacks, features)
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
        metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if finite(v)],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"  # hyperparameters and scores only: no patient data
        outcome.trials.to_csv(table, index=False)
        client.log_artifact(outcome.parent_run_id, str(table))
    client.set_terminated(outcome.parent_run_id, "FINISHED")
