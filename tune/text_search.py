"""Hyperparameter search for the note model with Ray Tune (random search + ASHA).

One trial = one `ml.text.fit` run: a Ray Train `TorchTrainer` inside a Tune trial, its reports
forwarded to Tune by `TuneReportCallback`. Unlike the XGBoost search (one in-process booster
per CPU), a note-model trial is itself data parallel and GPU-ready, so each trial keeps the
production training loop (the pattern of Ray's "Hyperparameter Tuning with Ray Tune" guide
for Train V2). On a small machine run one trial at a time (`max_concurrent`): a trial holds a
sliver of a CPU and its Train workers the rest, so two trials whose workers do not both fit
would wait on each other for ever.

Trials that ASHA stops are killed with their Train controller, but the controller's placement
group (the workers' CPUs) outlives it: Ray's own cleaner actor finds dead controllers through
the State API, which fails without a dashboard (`include_dashboard=False`, as in local runs
and tests) or with two Ray instances on one machine. The next trial then waits for those CPUs
for ever (seen here: 0.99 of 2 CPUs free, a 1-CPU worker group pending). `OrphanReaper`
removes such groups from the driver, reading the GCS tables directly.

Search space (`search_space()`; the first trial is the TextConfig default): learning_rate
loguniform(1e-5, 3e-4), batch_size in {8, 16, 32}, warmup_ratio uniform(0, 0.2),
weight_decay in {0, 0.01, 0.1}. Each trial reports validation loss every `eval_every` optimizer
steps (with a checkpoint); ASHA stops trials on `valid_loss` (mode min, `time_attr="step"`).
Fewer reports are cheaper; each costs an evaluation pass over the validation split.

The experiment lives in `<data dir>/tune/<name>` (`--resume` continues it with Tuner.restore).
MLflow: a parent run for the search, one child run per trial, written by the driver (the same
`MlflowSearchLogger` as the XGBoost search). The best trial's final checkpoint is then
evaluated on the test split, logged and registered (pending approval: `python -m ml registry
approve` makes it `challenger`) by `ml.experiment.train_text` (no retraining: the trial already is
a full training run), with its search provenance as version tags.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import ray.tune
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.config import Settings
from data.featureset import FeatureFolder
from tune.experiments import (
    SearchError,
    SearchInterrupted,
    check_new,
    fit_tuner,
    format_table,
    load_saved_search,
    save_search,
    search_interrupted,
    trial_dirname,
)
from tune.mlflow_logger import MlflowSearchLogger

log = logging.getLogger(__name__)

METRIC = "valid_loss"
TIME_ATTR = "step"
TUNED = ("learning_rate", "batch_size", "warmup_ratio", "weight_decay")


class TextSearchConfig(BaseModel):
    """One note-model search; saved as search.json in the experiment folder."""

    model_config = ConfigDict(extra="forbid")

    task: str
    name: str
    features: str | None = None
    datasets: str | None = None
    sample: int | None = Field(None, ge=10, description="Train rows per trial (quick searches).")
    num_samples: int = Field(4, ge=1)
    max_concurrent: int = Field(1, ge=1)
    max_steps: int = Field(60, ge=1, description="Optimizer steps per trial (ASHA max_t).")
    eval_every: int = Field(20, ge=1, description="Steps between reports (validation + checkpoint).")
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    model: str | None = None
    max_length: int = 128
    head_tokens: int = 32
    cpus_per_worker: int = 1
    use_gpu: bool = False
    seed: int = 0
    register_best: bool = True
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="Points tried right after the default (searched keys only)."
    )
    n_boot: int = Field(500, ge=10)

    @field_validator("points")
    @classmethod
    def _searched_keys_only(cls, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for point in points:
            if unknown := set(point) - set(TUNED):
                raise ValueError(f"points: {sorted(unknown)} are not searched; searched: {list(TUNED)}")
        return points


def search_space() -> dict[str, Any]:
    return {
        "learning_rate": ray.tune.loguniform(1e-5, 3e-4),
        "batch_size": ray.tune.choice([8, 16, 32]),
        "warmup_ratio": ray.tune.uniform(0.0, 0.2),
        "weight_decay": ray.tune.choice([0.0, 0.01, 0.1]),
    }


def default_point() -> dict[str, Any]:
    """The TextConfig defaults of the searched settings: the first trial, a baseline to beat."""
    from ml.text import TextConfig

    defaults = TextConfig()
    return {k: getattr(defaults, k) for k in TUNED}


class OrphanReaper(ray.tune.Callback):
    """Removes the placement groups of Train runs whose controller died with a stopped trial.

    Why and when: see the module docstring. Only groups whose creator was a `TrainController`
    actor that is now dead are removed, so other workloads on the cluster are untouched. Uses
    Ray's private GCS accessors (`ray._private.state`), checked against Ray 2.60.
    """

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self._last = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.reap()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reap()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reap()

    def reap(self) -> list[str]:
        removed = [pg_id for pg_id in orphaned_train_groups() if _remove_group(pg_id)]
        if removed:
            log.info("removed %d placement group(s) left by stopped trials: %s", len(removed), removed)
        return removed

    def reap_after_search(self, timeout_s: float = 20.0) -> None:
        """The last trials' controllers die shortly after Tune kills them: wait for that, then reap."""
        deadline = time.monotonic() + timeout_s
        while _live_train_controllers() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.reap()


def orphaned_train_groups() -> list[str]:
    """Hex ids of live placement groups created by a Train controller that has since died."""
    from ray._private.state import actors, state
    from ray.core.generated import gcs_pb2

    table = gcs_pb2.PlacementGroupTableData
    orphans = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = table.FromString(raw)
        if group.state == table.REMOVED or group.is_detached or not group.creator_actor_dead:
            continue
        creator = actors(actor_id=group.creator_actor_id.hex()) or {}
        if creator.get("ActorClassName") == "TrainController":
            orphans.append(group.placement_group_id.hex())
    return orphans


def _live_train_controllers() -> int:
    """Train controllers of this driver's job that are not dead yet."""
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return sum(
        1
        for actor in actors().values()
        if actor["ActorClassName"] == "TrainController" and actor["State"] != "DEAD" and actor["JobID"] == job
    )


def _remove_group(pg_id: str) -> bool:
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
    except Exception as err:  # already removed by Ray's own cleaner in the meantime
        log.debug("placement group %s not removed: %s", pg_id, err)
        return False
    return True


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def text_config(search: TextSearchConfig, point: dict[str, Any]):
    """The TextConfig of one trial: the search's fixed settings plus the sampled point."""
    from ml.text import TextConfig

    fixed = {
        "max_length": search.max_length,
        "head_tokens": search.head_tokens,
        "max_steps": search.max_steps,
        "checkpoint_every": search.eval_every,
        "cpus_per_worker": search.cpus_per_worker,
        "use_gpu": search.use_gpu,
        "seed": search.seed,
    }
    if search.model:
        fixed["model"] = search.model
    return TextConfig(**fixed, **{k: point[k] for k in TUNED if k in point})


def text_trial(point: dict[str, Any], search: dict[str, Any], splits: Any, datasets: dict) -> None:
    """One Tune trial: a full TorchTrainer run whose reports Tune sees."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ml.text import fit

    config = TextSearchConfig(**search)
    context = ray.tune.get_context()
    fit(
        splits,
        text_config(config, point),
        storage_path=str(Path(context.get_trial_dir()) / "train"),
        run_name=f"trial-{context.get_trial_id()}",
        callbacks=[TuneReportCallback()],
        datasets=datasets,
    )


def run_text_search(
    search: TextSearchConfig | None = None,
    resume_name: str | None = None,
    settings: Settings | None = None,
    callbacks: list[ray.tune.Callback] | None = None,
    features: FeatureFolder | None = None,
) -> dict[str, Any]:
    """Run (or resume) a search, register its best trial; returns the summary as a dict.

    `callbacks` are extra Tune callbacks for a new search (a resumed one restores its own).
    `features` is the search's feature folder if the caller has opened it already; else the
    search opens it, once: the trials' splits and the registered model's evaluation read it.
    """
    from mlflow import MlflowClient
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ml import registry
    from ml.experiment import TASK_MODEL_NAMES, train_text
    from ml.text_tasks import check_task_inputs, load_task

    if (search is None) == (resume_name is None):
        raise ValueError("give either a new search config or the name of a search to resume")
    registry.configure(settings)
    client = MlflowClient()
    if resume_name is not None:
        path, saved = load_saved_search(resume_name, settings)
        search = TextSearchConfig(**saved["config"])
        experiment_id, parent_run_id = saved["experiment_id"], saved["parent_run_id"]
    else:
        assert search is not None
        path = check_new(search.name, settings)
    if features is not None and features.uri != search.features:
        raise SearchError(f"the open feature folder {features.uri} is not the search's {search.features}")
    source = check_task_inputs(search.task, features or search.features, search.datasets)
    folder = source if isinstance(source, FeatureFolder) else None
    splits = load_task(
        search.task,
        features=folder,
        datasets=search.datasets,
        sample=search.sample,
        seed=search.seed,
    )
    splits.check()
    # Tokenized once here, not in every trial (the tokenizer settings are not searched), and so
    # no trial needs CPUs for Ray Data besides its Train workers.
    from ml.text import tokenized_datasets

    datasets = tokenized_datasets(splits, text_config(search, {}))
    trainable = ray.tune.with_parameters(
        text_trial, search=search.model_dump(), splits=splits, datasets=datasets
    )
    # The trial itself only waits on its Train run, whose workers hold the CPUs (0 is not allowed).
    trainable = ray.tune.with_resources(trainable, {"cpu": 0.01})
    started = time.perf_counter()
    if resume_name is not None:
        # Tune pickles its callbacks (the MLflow logger, the reaper) with the experiment.
        tuner = ray.tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        model_name = TASK_MODEL_NAMES[search.task]
        experiment_id = registry.experiment(model_name)
        parent = client.create_run(
            experiment_id,
            run_name=f"search-{search.name}",
            tags={"kind": "tune-search", "tune_experiment": search.name},
        )
        parent_run_id = parent.info.run_id
        logger = MlflowSearchLogger(
            experiment_id,
            parent_run_id,
            search.name,
            search.max_steps,
            params=TUNED,
            metrics=(METRIC, "valid_accuracy", "train_loss"),
            time_attr=TIME_ATTR,
            mode="min",
        )
        tuner = ray.tune.Tuner(
            trainable,
            param_space=search_space(),
            tune_config=ray.tune.TuneConfig(
                metric=METRIC,
                mode="min",
                num_samples=search.num_samples,
                # The concurrency limit goes on the generator: Tune ignores `max_concurrent_trials`
                # when a BasicVariantGenerator is passed in.
                search_alg=BasicVariantGenerator(
                    points_to_evaluate=[default_point(), *search.points],
                    max_concurrent=search.max_concurrent,
                    random_state=search.seed,
                ),
                trial_dirname_creator=trial_dirname,
                scheduler=ASHAScheduler(
                    time_attr=TIME_ATTR,
                    max_t=search.max_steps,
                    grace_period=min(search.grace_period or search.eval_every, search.max_steps),
                    reduction_factor=search.reduction_factor,
                ),
            ),
            run_config=ray.tune.RunConfig(
                name=path.name,
                storage_path=str(path.parent),
                callbacks=[logger, OrphanReaper(), *(callbacks or [])],
                verbose=1,
            ),
        )
        save_search(path, search, experiment_id, parent_run_id)
    try:
        grid = fit_tuner(tuner, client, parent_run_id)
    finally:
        OrphanReaper().reap_after_search()  # the last trials were killed as the search ended
    seconds = time.perf_counter() - started
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append(
            {
                "trial_id": metrics.get("trial_id"),
                METRIC: metrics.get(METRIC),
                "steps": metrics.get(TIME_ATTR),
                "error": result.error is not None,
                **{k: (result.config or {}).get(k) for k in TUNED},
                # TuneReportCallback passes the Train checkpoint as a path among the metrics.
                "checkpoint": metrics.get(CHECKPOINT_PATH_KEY),
            }
        )
    trials = pd.DataFrame(rows).sort_values(METRIC, na_position="last").reset_index(drop=True)
    if search_interrupted(grid, search.num_samples):
        client.set_terminated(parent_run_id, "KILLED")
        raise SearchInterrupted(search.name, path)
    best = trials.dropna(subset=[METRIC, "checkpoint"])
    if best.empty:
        client.set_terminated(parent_run_id, "FAILED")
        raise SearchError(f"search {search.name!r}: no trial finished with a checkpoint")
    top = best.iloc[0]
    client.log_metric(parent_run_id, f"best_{METRIC}", float(top[METRIC]))
    summary = trials.drop(columns=["checkpoint"])
    out: dict[str, Any] = {
        "search": search.name,
        "path": str(path),
        "trials": len(trials),
        "seconds": seconds,
        "steps_run": int(summary["steps"].fillna(0).sum()),
        "steps_fraction_run": float(summary["steps"].fillna(0).sum() / (len(trials) * search.max_steps)),
        "best": {k: _plain(top[k]) for k in (METRIC, "steps", *TUNED, "trial_id")},
        # every trial, best first (JSON-safe: numpy scalars and NaN become plain values / None)
        "top": json.loads(summary.to_json(orient="records")),
        "table": format_table(summary, top_k=5),
    }
    if search.register_best:
        tags = {
            "tune_experiment": search.name,
            "tune_parent_run_id": parent_run_id,
            "tune_trial_id": str(top["trial_id"]),
            "tune_trials": str(len(trials)),
        }
        result = train_text(
            search.task,
            text_config(search, top.to_dict()),
            features=folder,
            datasets=search.datasets,
            register=True,
            n_boot=search.n_boot,
            sample=search.sample,
            trained_checkpoint=str(top["checkpoint"]),
            tags=tags,
        )
        out["registered"] = result.get("registered")
        out["test"] = {k: v for k, v in result.items() if k.startswith("test_") and not k.endswith("_ci")}
    client.set_terminated(parent_run_id, "FINISHED")
    return out
